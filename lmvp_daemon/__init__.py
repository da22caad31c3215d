"""LMVP sync daemon: versions every finished checkpoint (and the metric files beside it) in the
watched folders, through a durable outbox; `lmvp-daemon` is its CLI, `SyncDaemon` its loop."""
