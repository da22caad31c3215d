"""LMVP desktop app: history, metric plots, sync control and tray (not yet)."""
