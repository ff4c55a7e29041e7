"""The teach app's storage: SQLite for projects, classes, samples and models; image files
named by the SHA-256 of their bytes; embeddings in convlab.embed's cache under the same
home folder, keyed by those file hashes.

Crash safety: an image file is written to a temporary name, fsynced and renamed
*before* the row that refers to it commits, so a committed sample always has its
file. A crash in between leaves at most an unreferenced file or temporary, which
`recover()` deletes at start-up (with model directories whose training never
finished, and cached embeddings of images no sample uses). Every change is one
transaction. Names of projects and classes live only in the database: no path on disk
is ever built from them.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import sqlite3
import threading
import time
import unicodedata
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from ..data import Preprocess, decode_image
from ..files import atomic_write_bytes
from ..errors import (ConfigError, Conflict, ConvlabError, DatasetError, NotFound, TooLarge,
                      UnsupportedImage, unknown)

__all__ = ["Store", "Limits", "SAMPLE_SIZE", "DEFAULT_BACKBONE", "check_name", "check_backbone",
           "canonical_image", "uploaded_image", "embedding_keys"]

# The backbone of a project created without a choice, and of every project made before
# projects had one (they were all trained on it).
DEFAULT_BACKBONE = "efficientnet_lite0"

# Samples are stored as the backbone sees them: a centre square scaled to 256x256
# (the backbone then crops its 224x224 centre), so thousands of them stay small.
SAMPLE_SIZE = 256
_CANONICAL = Preprocess(channels=3, size=(SAMPLE_SIZE, SAMPLE_SIZE), resize="shorter_crop",
                        crop_fraction=1.0, interpolation="bicubic")
ACCEPTED_FORMATS = {"JPEG": "JPEG", "PNG": "PNG", "WEBP": "WebP", "GIF": "GIF"}

_SCHEMA = """
CREATE TABLE IF NOT EXISTS projects(
  id INTEGER PRIMARY KEY, name TEXT NOT NULL, created REAL NOT NULL,
  backbone TEXT NOT NULL DEFAULT 'efficientnet_lite0');
CREATE TABLE IF NOT EXISTS classes(
  id INTEGER PRIMARY KEY,
  project_id INTEGER NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
  name TEXT NOT NULL, created REAL NOT NULL, UNIQUE(project_id, name));
CREATE TABLE IF NOT EXISTS samples(
  id INTEGER PRIMARY KEY,
  class_id INTEGER NOT NULL REFERENCES classes(id) ON DELETE CASCADE,
  sha TEXT NOT NULL, source TEXT NOT NULL, created REAL NOT NULL);
CREATE INDEX IF NOT EXISTS samples_class ON samples(class_id);
CREATE INDEX IF NOT EXISTS samples_sha ON samples(sha);
CREATE TABLE IF NOT EXISTS models(
  id INTEGER PRIMARY KEY,
  project_id INTEGER NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
  status TEXT NOT NULL, options TEXT NOT NULL, classes TEXT NOT NULL DEFAULT '[]',
  metrics TEXT NOT NULL DEFAULT '{}', error TEXT NOT NULL DEFAULT '',
  created REAL NOT NULL, finished REAL);
-- embeddings live in convlab.embed's cache now (Store.embedding_dir); homes from before
-- that kept them in this table, which is dropped once on opening
DROP TABLE IF EXISTS embeddings;
"""


@dataclass(frozen=True)
class Limits:
    """Upload limits: bytes per file, pixels per image, bytes per request."""

    file_bytes: int = 16 * 2**20
    pixels: int = 40_000_000
    request_bytes: int = 256 * 2**20


def check_name(name: object, kind: str) -> str:
    """A project or class name: 1-64 printable characters, no path separators.

    Names are also folder names in an exported dataset zip, so they may not be
    '.', '..', start with a dot, or contain '/', '\\' or control characters.
    """
    if not isinstance(name, str):
        raise DatasetError(f"{kind} name must be a string")
    name = unicodedata.normalize("NFC", name).strip()
    bad = [ch for ch in name if ch in "/\\" or unicodedata.category(ch)[0] == "C"]
    if not 1 <= len(name) <= 64 or bad or name.startswith("."):
        raise DatasetError(
            f"invalid {kind} name {name[:80]!r}: use 1-64 printable characters, not starting "
            f"with '.', without '/', '\\' or control characters")
    return name


def check_backbone(name: object) -> str:
    """A project's backbone: a registered model whose ImageNet weights load offline."""
    from ..models import list_pretrained

    offline = list_pretrained()
    if name not in offline:
        raise ConfigError(unknown("backbone", str(name)[:80], offline,
                                  "the offline backbones (see: convlab backbones)"))
    return str(name)


def uploaded_image(data: bytes, limits: Limits) -> torch.Tensor:
    """Check an uploaded file by its content and decode it at its own size, uint8 (3, H, W).

    The type comes from the bytes (JPEG, PNG, WebP or GIF; a GIF gives its first
    frame), never from a file name; the pixel count is checked from the header
    before anything is decoded, so decompression bombs cost nothing.
    """
    if len(data) > limits.file_bytes:
        raise TooLarge(f"file of {len(data):,} bytes is over the limit of {limits.file_bytes:,}")
    try:
        with Image.open(io.BytesIO(data)) as img:
            fmt, (w, h) = img.format, img.size
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError):
        raise UnsupportedImage("not an image file; accepted: JPEG, PNG, WebP, GIF") from None
    if fmt not in ACCEPTED_FORMATS:
        raise UnsupportedImage(f"{fmt} images are not accepted; accepted: "
                               f"{', '.join(ACCEPTED_FORMATS.values())}")
    if w * h > limits.pixels:
        raise TooLarge(f"{w}x{h} image is over the limit of {limits.pixels:,} pixels")
    return decode_image(data, channels=3)                      # (3, h, w)


def canonical_image(data: bytes, limits: Limits) -> torch.Tensor:
    """An uploaded file checked and decoded (uploaded_image), brought to the stored
    uint8 (3, 256, 256)."""
    return _CANONICAL.fit(uploaded_image(data, limits)[None])[0]


def embedding_keys(shas: list[str]) -> np.ndarray:
    """The embeddings cache's content key of each stored sample: the first 16 bytes of its
    file's SHA-256, uint8 (N, 16). The file's bytes fix its pixels, so the key stands
    for them and a cached sample need not be decoded."""
    raw = b"".join(bytes.fromhex(s)[:16] for s in shas)
    return np.frombuffer(raw, dtype=np.uint8).reshape(-1, 16)


def encode_jpeg(img: torch.Tensor) -> bytes:
    """uint8 (3, H, W) -> JPEG bytes (quality 92; deterministic for equal pixels)."""
    buf = io.BytesIO()
    Image.fromarray(img.permute(1, 2, 0).numpy(), "RGB").save(buf, "JPEG", quality=92)
    return buf.getvalue()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Store:
    """Projects, classes, samples, models and cached embeddings under one home folder.

    Thread-safe: each thread gets its own SQLite connection (WAL mode, so readers
    never wait for a writer); writes are short transactions.
    """

    def __init__(self, home: str | os.PathLike, limits: Limits = Limits()) -> None:
        self.home = Path(home)
        self.limits = limits
        self.blob_dir = self.home / "images"
        self.model_dir = self.home / "models"
        self.embedding_dir = self.home / "embeddings"  # convlab.embed's cache (a folder per backbone)
        for d in (self.home, self.blob_dir, self.model_dir):
            d.mkdir(parents=True, exist_ok=True)
        self.db_path = self.home / "teach.sqlite3"
        self._local = threading.local()
        # Writing a file and committing its row, and checking a file is unused and deleting
        # it, each happen under this lock, so a delete never removes the file of an
        # identical image that another request is adding at the same moment.
        self._files = threading.Lock()
        self._connect().executescript(_SCHEMA)  # idempotent; executescript commits itself
        self._migrate()

    # ------------------------------------------------------------------ plumbing
    def _connect(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.db_path, timeout=30, isolation_level=None,
                                 check_same_thread=False)
            db.row_factory = sqlite3.Row
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            db.execute("PRAGMA foreign_keys=ON")
            self._local.db = db
        return db

    def _migrate(self) -> None:
        """Bring a home made by an older version up to the current schema."""
        with self.transaction() as db:
            columns = {r[1] for r in db.execute("PRAGMA table_info(projects)")}
            if "backbone" not in columns:  # homes from before projects chose their backbone
                db.execute("ALTER TABLE projects ADD COLUMN backbone TEXT NOT NULL "
                           f"DEFAULT '{DEFAULT_BACKBONE}'")

    @contextmanager
    def transaction(self):
        """One atomic change: BEGIN IMMEDIATE ... COMMIT, rolled back on any error."""
        db = self._connect()
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    def _query(self, sql: str, args: tuple = ()) -> list[sqlite3.Row]:
        return self._connect().execute(sql, args).fetchall()

    def blob_path(self, sha: str) -> Path:
        return self.blob_dir / sha[:2] / f"{sha}.jpg"

    def _write_blob(self, data: bytes) -> str:
        sha = hashlib.sha256(data).hexdigest()
        path = self.blob_path(sha)
        if path.exists():
            return sha
        atomic_write_bytes(path, data)  # identical bytes if two requests race on one name
        _fsync_dir(path.parent)
        return sha

    def recover(self) -> dict:
        """Start-up clean-up after a crash: drop unreferenced image files and temporaries
        (half-built exports too), mark interrupted trainings failed, delete model folders no row calls ready, and
        drop cached embeddings of images no sample uses any more."""
        with self.transaction() as db:
            stopped = db.execute(
                "UPDATE models SET status='failed', error='the server stopped during training', "
                "finished=? WHERE status IN ('queued', 'training')", (time.time(),)).rowcount
        referenced = {r[0] for r in self._query("SELECT DISTINCT sha FROM samples")}
        removed = 0
        for path in self.blob_dir.glob("*/*"):
            if path.name.startswith(".") or path.stem not in referenced:
                path.unlink(missing_ok=True)
                removed += 1
        ready = {str(r[0]) for r in self._query("SELECT id FROM models WHERE status='ready'")}
        dropped = 0
        for path in self.model_dir.iterdir():
            if path.name not in ready:
                shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink()
                dropped += 1
        exports = self.home / "exports"
        for path in exports.glob(".*") if exports.is_dir() else ():   # half-built exports
            shutil.rmtree(path, ignore_errors=True)
        if self.embedding_dir.is_dir():
            from ..embed import prune_cache
            keep = {k.tobytes() for k in embedding_keys(sorted(referenced))}
            prune_cache(self.embedding_dir, keep)
        return {"interrupted_trainings": stopped, "orphan_files": removed, "orphan_models": dropped}

    def _drop_unreferenced(self, shas: set[str]) -> None:
        """Delete image files whose last sample was just deleted (after the commit)."""
        if not shas:
            return
        marks = ",".join("?" * len(shas))
        with self._files:
            still = {r[0] for r in self._query(f"SELECT sha FROM samples WHERE sha IN ({marks})",
                                               tuple(shas))}
            for sha in shas - still:
                self.blob_path(sha).unlink(missing_ok=True)

    # ------------------------------------------------------------------ projects
    def create_project(self, name: str, backbone: str = DEFAULT_BACKBONE) -> dict:
        """A new project whose images are embedded by `backbone` (an offline backbone)."""
        name = check_name(name, "project")
        backbone = check_backbone(backbone)
        with self.transaction() as db:
            pid = db.execute("INSERT INTO projects(name, created, backbone) VALUES (?, ?, ?)",
                             (name, time.time(), backbone)).lastrowid
        return self.project(pid)

    def projects(self) -> list[dict]:
        rows = self._query(
            "SELECT p.id, p.name, p.created, p.backbone, "
            "(SELECT COUNT(*) FROM classes c WHERE c.project_id=p.id) AS classes, "
            "(SELECT COUNT(*) FROM samples s JOIN classes c ON s.class_id=c.id "
            " WHERE c.project_id=p.id) AS samples FROM projects p ORDER BY p.id")
        return [dict(r) for r in rows]

    def project(self, pid: int) -> dict:
        rows = self._query("SELECT id, name, created, backbone FROM projects WHERE id=?", (pid,))
        if not rows:
            raise NotFound(f"no project with id {pid}; list them with GET /api/projects")
        out = dict(rows[0])
        out["classes"] = self.classes(pid)
        return out

    def rename_project(self, pid: int, name: str) -> dict:
        name = check_name(name, "project")
        with self.transaction() as db:
            if not db.execute("UPDATE projects SET name=? WHERE id=?", (name, pid)).rowcount:
                raise NotFound(f"no project with id {pid}")
        return self.project(pid)

    def set_backbone(self, pid: int, backbone: str) -> dict:
        """Switch the project to another backbone: the next training embeds its images
        with that one (its own cache rows); models trained before keep theirs."""
        backbone = check_backbone(backbone)
        with self.transaction() as db:
            if not db.execute("UPDATE projects SET backbone=? WHERE id=?",
                              (backbone, pid)).rowcount:
                raise NotFound(f"no project with id {pid}")
        return self.project(pid)

    def delete_project(self, pid: int) -> None:
        self.project(pid)
        shas = {r[0] for r in self._query(
            "SELECT s.sha FROM samples s JOIN classes c ON s.class_id=c.id WHERE c.project_id=?",
            (pid,))}
        models = [r[0] for r in self._query("SELECT id FROM models WHERE project_id=?", (pid,))]
        with self.transaction() as db:
            db.execute("DELETE FROM projects WHERE id=?", (pid,))
        self._drop_unreferenced(shas)
        for mid in models:
            shutil.rmtree(self.model_dir / str(mid), ignore_errors=True)

    # ------------------------------------------------------------------- classes
    def classes(self, pid: int) -> list[dict]:
        rows = self._query(
            "SELECT c.id, c.name, (SELECT COUNT(*) FROM samples s WHERE s.class_id=c.id) AS samples "
            "FROM classes c WHERE c.project_id=? ORDER BY c.id", (pid,))
        return [dict(r) for r in rows]

    def class_(self, cid: int) -> dict:
        rows = self._query("SELECT id, project_id, name FROM classes WHERE id=?", (cid,))
        if not rows:
            raise NotFound(f"no class with id {cid}")
        return dict(rows[0])

    def add_class(self, pid: int, name: str) -> dict:
        name = check_name(name, "class")
        self.project(pid)
        try:
            with self.transaction() as db:
                cid = db.execute("INSERT INTO classes(project_id, name, created) VALUES (?, ?, ?)",
                                 (pid, name, time.time())).lastrowid
        except sqlite3.IntegrityError:
            raise Conflict(f"project {pid} already has a class named {name!r}") from None
        return {"id": cid, "project_id": pid, "name": name, "samples": 0}

    def rename_class(self, cid: int, name: str) -> dict:
        name = check_name(name, "class")
        c = self.class_(cid)
        try:
            with self.transaction() as db:
                db.execute("UPDATE classes SET name=? WHERE id=?", (name, cid))
        except sqlite3.IntegrityError:
            raise Conflict(f"project {c['project_id']} already has a class named {name!r}") from None
        return self.class_(cid)

    def delete_class(self, cid: int) -> None:
        self.class_(cid)
        shas = {r[0] for r in self._query("SELECT sha FROM samples WHERE class_id=?", (cid,))}
        with self.transaction() as db:
            db.execute("DELETE FROM classes WHERE id=?", (cid,))
        self._drop_unreferenced(shas)

    # ------------------------------------------------------------------- samples
    def add_samples(self, cid: int, files: list[bytes], source: str = "upload") -> list[dict]:
        """Check, decode and store image files as samples of class `cid`, all or none.

        Files are written (temp + fsync + rename) before the rows commit in one
        transaction; a bad file refuses the whole request and names which one.
        """
        self.class_(cid)
        encoded = []
        for i, data in enumerate(files):
            try:
                encoded.append(encode_jpeg(canonical_image(data, self.limits)))
            except ConvlabError as exc:
                exc.args = (f"file {i + 1} of {len(files)}: {exc}",)
                raise
        now = time.time()
        with self._files:
            shas = [self._write_blob(data) for data in encoded]
            with self.transaction() as db:
                if not db.execute("SELECT 1 FROM classes WHERE id=?", (cid,)).fetchone():
                    raise NotFound(f"class {cid} was deleted meanwhile")
                ids = [db.execute("INSERT INTO samples(class_id, sha, source, created) "
                                  "VALUES (?,?,?,?)", (cid, sha, source, now)).lastrowid
                       for sha in shas]
        return [{"id": i, "class_id": cid, "sha": s} for i, s in zip(ids, shas)]

    def samples(self, cid: int, limit: int = 100, offset: int = 0) -> list[dict]:
        """Newest first."""
        self.class_(cid)
        rows = self._query("SELECT id, sha, source, created FROM samples WHERE class_id=? "
                           "ORDER BY id DESC LIMIT ? OFFSET ?", (cid, limit, offset))
        return [dict(r) for r in rows]

    def delete_sample(self, sid: int) -> None:
        rows = self._query("SELECT sha FROM samples WHERE id=?", (sid,))
        if not rows:
            raise NotFound(f"no sample with id {sid}")
        with self.transaction() as db:
            db.execute("DELETE FROM samples WHERE id=?", (sid,))
        self._drop_unreferenced({rows[0][0]})

    def read_image(self, sha: str) -> torch.Tensor:
        """A stored sample as uint8 (3, 256, 256)."""
        return decode_image(self.blob_path(sha), channels=3)

    def project_samples(self, pid: int) -> tuple[list[str], list[int], list[str]]:
        """(class names sorted, label per sample, sha per sample) for training and export.

        Classes are sorted by name: the order a folder of class folders loads in, so an
        exported run and an exported dataset agree for `convlab evaluate`."""
        classes = sorted(c["name"] for c in self.classes(pid))
        index = {name: i for i, name in enumerate(classes)}
        rows = self._query("SELECT c.name, s.sha FROM samples s JOIN classes c ON s.class_id=c.id "
                           "WHERE c.project_id=? ORDER BY s.id", (pid,))
        return classes, [index[r[0]] for r in rows], [r[1] for r in rows]

    # -------------------------------------------------------------------- models
    def create_model_row(self, pid: int, options: dict) -> int:
        with self.transaction() as db:
            if db.execute("SELECT 1 FROM models WHERE project_id=? AND status IN "
                          "('queued', 'training')", (pid,)).fetchone():
                raise Conflict(f"project {pid} is already training; wait for it to finish "
                               f"(GET /api/projects/{pid}/training)")
            return db.execute("INSERT INTO models(project_id, status, options, created) "
                              "VALUES (?, 'training', ?, ?)",
                              (pid, json.dumps(options), time.time())).lastrowid

    def finish_model(self, mid: int, classes: list[str], metrics: dict) -> None:
        with self.transaction() as db:
            db.execute("UPDATE models SET status='ready', classes=?, metrics=?, finished=? "
                       "WHERE id=?", (json.dumps(classes), json.dumps(metrics), time.time(), mid))

    def fail_model(self, mid: int, error: str) -> None:
        with self.transaction() as db:
            db.execute("UPDATE models SET status='failed', error=?, finished=? WHERE id=?",
                       (error, time.time(), mid))

    def models(self, pid: int) -> list[dict]:
        rows = self._query("SELECT * FROM models WHERE project_id=? ORDER BY id DESC", (pid,))
        return [self._model_dict(r) for r in rows]

    def model(self, mid: int) -> dict:
        rows = self._query("SELECT * FROM models WHERE id=?", (mid,))
        if not rows:
            raise NotFound(f"no model with id {mid}")
        return self._model_dict(rows[0])

    def latest_model(self, pid: int) -> dict | None:
        rows = self._query("SELECT * FROM models WHERE project_id=? AND status='ready' "
                           "ORDER BY id DESC LIMIT 1", (pid,))
        return self._model_dict(rows[0]) if rows else None

    @staticmethod
    def _model_dict(r: sqlite3.Row) -> dict:
        d = dict(r)
        for k in ("options", "classes", "metrics"):
            d[k] = json.loads(d[k])
        return d
