"""`convlab teach`: the local Teachable Machine web app."""
from __future__ import annotations

import argparse
import ipaddress
import os
import secrets
import socket
from pathlib import Path

from ..errors import ConfigError

__all__ = ["register", "default_home", "is_loopback"]


def default_home() -> Path:
    """$CONVLAB_TEACH_HOME, else $XDG_DATA_HOME/convlab/teach (~/.local/share/convlab/teach)."""
    if os.environ.get("CONVLAB_TEACH_HOME"):
        return Path(os.environ["CONVLAB_TEACH_HOME"])
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(base) / "convlab" / "teach"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # Accepted connections inherit this (Linux): without it a response written in two
    # parts waits for the client's delayed ACK, ~40 ms added to every request.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port} ({exc.strerror}); choose another "
                          f"--port (0 picks a free one)") from None
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def cmd_teach(args: argparse.Namespace) -> int:
    try:
        import uvicorn

        from ..web import create_app
    except ImportError as exc:
        raise ConfigError(f"the web app needs its extras ({exc.name} is missing): "
                          f"pip install 'convlab[web]'") from None
    loopback = is_loopback(args.host)
    token = args.token or (None if loopback else secrets.token_urlsafe(24))
    if args.token is not None and len(args.token) < 16:
        raise ConfigError("--token must be at least 16 characters")
    import torch
    # One compute thread per request: requests (and the training thread) run side by side
    # on the cores instead of each spreading over all of them; under load, threads of one
    # operation contend for the same cores and each waits for the slowest (docs/teach.md).
    torch.set_num_threads(1)
    sock = _bind(args.host, args.port)
    port = sock.getsockname()[1]
    shown = f"[{args.host}]" if ":" in args.host else args.host
    hosts = {f"{shown}:{port}", f"localhost:{port}", f"127.0.0.1:{port}"} if loopback else None
    home = (Path(args.home) if args.home else default_home()).expanduser().resolve()
    app = create_app(home, token=token, hosts=hosts)
    rec = app.state.recovered
    if any(rec.values()):
        print(f"recovered after an unclean stop: {rec}")
    url = f"http://{shown}:{port}/" + (f"?token={token}" if token else "")
    print(f"convlab teach: open {url}\n  data in {home}; API docs at http://{shown}:{port}/docs; "
          f"Ctrl+C stops", flush=True)
    if token and not args.token:
        print(f"  access token (needed from other machines): {token}", flush=True)
    config = uvicorn.Config(app, log_level=args.log_level, access_log=args.log_level == "debug",
                            timeout_graceful_shutdown=3)
    uvicorn.Server(config).run(sockets=[sock])
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("teach", help="start the local Teachable Machine web app",
                       description="Teach an image classifier in the browser: classes from the "
                       "webcam or files, frozen EfficientNet-Lite0 features + a small head, live "
                       "preview, export. Everything stays on this machine.")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this machine only; any other "
                        "address requires an access token)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 picks a free one)")
    p.add_argument("--home", help=f"where projects are stored (default {default_home()})")
    p.add_argument("--token", help="access token to require (default: generated when --host is "
                                   "not a loopback address)")
    p.add_argument("--log-level", default="warning",
                   choices=("critical", "error", "warning", "info", "debug"),
                   help="server log level (default warning)")
    p.set_defaults(run=cmd_teach)
