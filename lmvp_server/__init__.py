"""The LMVP server: users, projects, models, immutable versions and their checkpoint bytes.

`create_app` builds the FastAPI application; `lmvp-server` (see `cli.py`) runs it.
"""

from __future__ import annotations

__version__ = "0.1.0"

from lmvp_server.app import create_app
from lmvp_server.settings import Settings

__all__ = ["Settings", "__version__", "create_app"]
