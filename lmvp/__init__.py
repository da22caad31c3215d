"""LMVP client: fetch, update and publish versioned models from anywhere.

The full API (`lmvp.download`, `lmvp.update`, `lmvp.show_history`) lands with the client issue.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
