"""The LMVP server: users, projects, models, immutable versions and their checkpoint bytes.

`create_app` builds the FastAPI application; `lmvp-server` (see `cli.py`) runs it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from lmvp_server.app import create_app
    from lmvp_server.settings import Settings


def __getattr__(name: str) -> Any:
    # Imported on first use: the web framework takes a second to load, which every
    # `lmvp-server user ...` or `token ...` command paid without needing it.
    if name == "create_app":
        from lmvp_server.app import create_app

        return create_app
    if name == "Settings":
        from lmvp_server.settings import Settings

        return Settings
    raise AttributeError(f"module 'lmvp_server' has no attribute {name!r}")


__all__ = ["Settings", "__version__", "create_app"]
