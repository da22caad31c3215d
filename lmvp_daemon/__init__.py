"""LMVP sync daemon: versions every finished checkpoint in the watched folders (not yet)."""
