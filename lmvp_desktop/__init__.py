"""LMVP desktop app (`lmvp-desktop`): version history, metric plots, the sync panel and the
tray, with the sync daemon embedded in-process."""
