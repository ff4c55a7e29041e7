"""`convlab teach`: a local Teachable Machine (FastAPI app, SQLite store, static UI)."""
from .app import create_app
from .store import Limits, Store

__all__ = ["create_app", "Limits", "Store"]
