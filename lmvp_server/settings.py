"""Server settings, read from `LMVP_*` environment variables and overridden by CLI flags."""

from __future__ import annotations

from pathlib import Path

import platformdirs
from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from lmvp_server.file_modes import private_dir, warn_if_open
from lmvp_server.s3 import S3Location

DEFAULT_PORT = 8470
# Connections all workers together may open to PostgreSQL when the pool is sized by default:
# under its default max_connections (100), leaving room for psql, backups and other services.
DATABASE_CONNECTION_BUDGET = 80
# Per worker, at most: what one process had before the pool was sized by workers.
MAX_CONNECTIONS_PER_WORKER = 30


def _default_data_dir() -> Path:
    return Path(platformdirs.user_data_dir("lmvp-server", appauthor=False))


class Settings(BaseSettings):
    """Everything a deployment can tune. Field `x` is read from `LMVP_X`."""

    model_config = SettingsConfigDict(env_prefix="LMVP_", extra="ignore")

    data_dir: Path = Field(default_factory=_default_data_dir)
    # Empty means the embedded default: SQLite inside `data_dir`.
    database_url: str = ""
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    # The largest single file a client may upload, in bytes (default 200 GiB).
    max_upload_size: int = 200 * 1024**3
    # The largest metadata JSON a version may carry, in bytes once serialised.
    max_metadata_bytes: int = 64 * 1024
    # The most distinct metric keys one run may hold: each key read is a query, and the web
    # console's run page reads them all.
    max_metric_keys: int = 1000
    # Password logins (see lmvp_server/login_guard.py): an account with this many failures
    # within the window, or an address with the second number, is refused (429) until enough
    # of them leave the window.
    login_failure_limit: int = 10
    login_address_failure_limit: int = 50
    login_failure_window_seconds: int = 15 * 60
    # Lifetime of the token a password login returns.
    login_token_days: int = 30
    # Incomplete uploads untouched for this long (by the database's record of their last
    # activity) are removed, by whichever server runs the background jobs (lmvp_server/fleet.py).
    upload_expiry_days: int = 7
    # How often that server looks for them, in seconds.
    upload_expiry_check_seconds: float = Field(default=3600.0, gt=0)
    # How often a server that does not run the background jobs checks whether the one that
    # does is gone (and the one that does, that it still holds the lock), in seconds.
    fleet_retry_seconds: float = Field(default=5.0, gt=0)
    # A PATCH whose body stops arriving for this long ends (its bytes so far kept) and lets go
    # of its upload, so that a resuming client's request on any worker can take over.
    upload_stall_seconds: float = Field(default=20.0, gt=0)
    # Deleted versions, models and projects stay in the trash, restorable, for this long; then
    # their rows are purged (services/trash.py) and the garbage collector may free their bytes.
    trash_days: float = Field(default=7, ge=0)
    # How often the server purges the expired trash and applies every retention policy (besides
    # applying a model's policy after each commit to it).
    retention_interval_seconds: float = Field(default=3600, gt=0)
    # The garbage collector (lmvp_server/gc.py): seconds between passes in the server (0: only
    # on demand, `lmvp-server gc` or POST /api/v1/admin/gc); how long a blob stored or claimed
    # (an upload completing into it, `blobs/missing` saying a project holds it) is kept even
    # when nothing references it, which must exceed the time a client takes from asking
    # `blobs/missing` to committing; and how many blobs one transaction of a pass handles.
    gc_interval: float = Field(default=3600, ge=0)
    gc_grace_seconds: float = Field(default=3600, ge=0)
    gc_batch: int = Field(default=200, ge=1, le=10_000)
    # TESTS ONLY, off (0) by default: a pass sleeps this long after deleting each batch's bytes,
    # before committing, so a test can kill the server in the middle of a pass.
    gc_test_pause_seconds: float = Field(default=0, ge=0)
    # Take uploads from clients on this machine as file descriptors over a Unix socket, instead
    # of their bytes over HTTP (see lmvp_server/local_uploads.py).
    local_uploads: bool = True
    # Create an `admin` user with a random password on a first start with no users.
    initial_admin: bool = True
    # Worker processes of this server (`serve --workers`); sizes the database pool.
    workers: int = Field(default=1, ge=1)
    # Connections each worker keeps open to PostgreSQL, and the most it may open beyond them
    # under load. Unset (0 and -1), they are derived from `workers` so that all workers
    # together stay within DATABASE_CONNECTION_BUDGET; see `database_pool`.
    db_pool_size: int = Field(default=0, ge=0)
    db_max_overflow: int = Field(default=-1, ge=-1)
    # Where blobs live: `local` (a folder in `data_dir`, the default) or `s3://BUCKET/PREFIX`
    # on an S3-compatible object store (see lmvp_server/s3.py, s3_store.py). Credentials are
    # found the standard AWS way (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, a profile, a role).
    blob_store: str = "local"
    # The store's endpoint (MinIO, SeaweedFS, Ceph, R2...); empty means AWS S3 itself.
    s3_endpoint_url: str = ""
    # The bucket's region; empty means what the AWS configuration says.
    s3_region: str = ""
    # Create the bucket at start when it does not exist. Off by default: a mistyped bucket
    # name must stop the server, not start a new, empty store.
    s3_create_bucket: bool = False
    # Answer blob downloads with a redirect to a presigned URL valid this many seconds, so
    # the bytes go from the store to the client without passing through the server.
    s3_presign: bool = False
    s3_presign_seconds: int = Field(default=300, ge=1, le=7 * 24 * 3600)

    @field_validator("blob_store")
    @classmethod
    def _known_blob_store(cls, value: str) -> str:
        value = value.strip()
        if value != "local":
            S3Location.parse(value)  # raises, naming what is wrong
        return value

    @property
    def s3_location(self) -> S3Location | None:
        """The bucket and prefix of `LMVP_BLOB_STORE`, or None for the local store."""
        return None if self.blob_store == "local" else S3Location.parse(self.blob_store)

    @property
    def effective_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{self.data_dir / 'lmvp.db'}"

    def database_pool(self) -> tuple[int, int]:
        """(pool_size, max_overflow) of each worker's PostgreSQL pool: by default the worker's
        whole share of the budget, kept once opened, where the share is (budget - 1, the
        start-up lock's connection) / workers, less the worker's event listener
        (`EventHub.listen`), at most 30 and at least 1.

        Connections are opened as requests need them, never ahead. None is opened "on demand"
        to be closed again: an overflow connection is closed as soon as it is handed back while
        the pool is full, so a load steadily above the pool opened and closed PostgreSQL
        connections all the time (13 in 3 s under 16 clients with a pool of 10), each a new
        backend process and a SCRAM handshake, which cost more CPU than the queries."""
        share = min(
            MAX_CONNECTIONS_PER_WORKER,
            max(1, (DATABASE_CONNECTION_BUDGET - 1) // self.workers - 1),
        )
        size = self.db_pool_size or share
        overflow = self.db_max_overflow if self.db_max_overflow >= 0 else 0
        return size, overflow

    @property
    def blob_dir(self) -> Path:
        return self.data_dir / "blobs"

    @property
    def upload_dir(self) -> Path:
        return self.data_dir / "uploads"

    def prepare_dirs(self) -> None:
        """Create the data directories (mode 0700: they hold everyone's checkpoints and the
        password hashes). Blobs and uploads are closed to others if an older server left them
        open; a data directory others may enter is named in a warning (see
        `lmvp_server.file_modes`)."""
        self.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        warn_if_open(self.data_dir, "the data directory")
        for path in (self.blob_dir, self.upload_dir):
            private_dir(path)
