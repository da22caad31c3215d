"""`lmvp-server`: run the server and administer users, tokens and the schema."""

from __future__ import annotations

import argparse
import copy
import getpass
import json
import logging
import os
import secrets
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter, ValidationError
from sqlalchemy import func, select

from lmvp_server import __version__
from lmvp_server.db import make_engine, make_sessionmaker, session_scope, utcnow
from lmvp_server.file_modes import restrict_umask
from lmvp_server.migrate import apply_migrations, startup_lock, upgrade_database
from lmvp_server.models import TokenScope, User
from lmvp_server.schemas import UserCreate, Username
from lmvp_server.security import hash_password, issue_token
from lmvp_server.settings import DATABASE_CONNECTION_BUDGET, Settings
from lmvp_server.storage import BlobStoreConfigError, StoreUnavailable, open_blob_store

INITIAL_ADMIN = "admin"
# The application's own log lines, in the serving process and in every worker; the process id
# tells the workers apart.
LOG_FORMAT = "%(asctime)s %(levelname)s [%(process)d] %(name)s: %(message)s"
# A server that finds the first admin created this recently, and no password file of its own,
# says it was made by another server starting beside it.
JUST_CREATED = timedelta(hours=1)


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    settings = _settings(args)
    # Everything the server writes (database, blobs, uploads, the admin password) is its own.
    restrict_umask()
    try:
        code: int = args.func(args, settings)
    except KeyboardInterrupt:
        return 130
    return code


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lmvp-server", description="The LMVP server.")
    parser.add_argument("--version", action="version", version=f"lmvp-server {__version__}")
    parser.add_argument(
        "--data-dir", type=Path, help="where the database and blobs live [env LMVP_DATA_DIR]"
    )
    parser.add_argument(
        "--database-url",
        help="SQLAlchemy URL, e.g. "
        "postgresql+psycopg://user@host/db [env LMVP_DATABASE_URL; default: "
        "SQLite in the data dir]",
    )
    sub = parser.add_subparsers(title="commands")

    serve = sub.add_parser("serve", help="run the server")
    serve.add_argument("--host", help="address to listen on [default 127.0.0.1: this machine only]")
    serve.add_argument("--port", type=int, help="port [default 8470]")
    serve.add_argument("--workers", type=int, default=1, help="worker processes [default 1]")
    serve.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    serve.set_defaults(func=_serve)

    migrate = sub.add_parser("migrate", help="bring the database schema up to date")
    migrate.set_defaults(func=_migrate)

    gc = sub.add_parser(
        "gc", help="free the bytes of blobs that no version references (one pass, then exit)"
    )
    gc.add_argument("--dry-run", action="store_true", help="only say what a pass would free")
    gc.set_defaults(func=_gc)

    user = sub.add_parser("user", help="manage users").add_subparsers(title="user commands")
    create = user.add_parser("create", help="create a user")
    create.add_argument("name")
    create.add_argument("--admin", action="store_true", help="a server admin (owner everywhere)")
    create.add_argument("--display-name", default="")
    create.add_argument(
        "--password-stdin",
        action="store_true",
        help="read the password from standard input instead of asking",
    )
    create.set_defaults(func=_user_create)

    blobs = sub.add_parser("blobs", help="manage the blob store").add_subparsers(
        title="blobs commands"
    )
    migrate_blobs = blobs.add_parser(
        "migrate",
        help="copy every blob of the local store into an S3 bucket (resumable; the server may "
        "keep running)",
    )
    migrate_blobs.add_argument(
        "--to",
        required=True,
        metavar="s3://BUCKET/PREFIX",
        help="where the blobs go; the store is reached as LMVP_S3_ENDPOINT_URL, LMVP_S3_REGION "
        "and the AWS credentials say",
    )
    migrate_blobs.set_defaults(func=_blobs_migrate)

    token = sub.add_parser("token", help="manage tokens").add_subparsers(title="token commands")
    tcreate = token.add_parser("create", help="create an API token for a user and print it")
    tcreate.add_argument("user")
    tcreate.add_argument("--name", default="cli")
    tcreate.add_argument("--scope", choices=["read", "write"], default="write")
    tcreate.add_argument(
        "--expires-days", type=_positive_int, default=None, help="[default: never expires]"
    )
    tcreate.set_defaults(func=_token_create)
    return parser


def _settings(args: argparse.Namespace) -> Settings:
    """Flags override `LMVP_*` variables; they are exported so worker processes see them too."""
    overrides = {
        "data_dir": args.data_dir,
        "database_url": args.database_url,
        "host": getattr(args, "host", None),
        "port": getattr(args, "port", None),
        "workers": getattr(args, "workers", None),
    }
    for key, value in overrides.items():
        if value is not None:
            os.environ[f"LMVP_{key.upper()}"] = str(value)
    return Settings()


def _open_db(settings: Settings) -> tuple[object, object]:
    settings.prepare_dirs()
    engine = make_engine(settings.effective_database_url)
    upgrade_database(engine)
    return engine, make_sessionmaker(engine)


def _migrate(_args: argparse.Namespace, settings: Settings) -> int:
    _open_db(settings)
    print(f"database at {_safe_url(settings)} is up to date")
    return 0


def _gc(args: argparse.Namespace, settings: Settings) -> int:
    """One garbage collection pass (lmvp_server/gc.py), safe beside running servers."""
    from lmvp_server.gc import GCError, collect
    from lmvp_server.storage import open_blob_store

    settings.prepare_dirs()
    engine = make_engine(settings.effective_database_url, pool=(1, 1))
    upgrade_database(engine)
    try:
        report = collect(
            make_sessionmaker(engine), open_blob_store(settings), settings, dry_run=args.dry_run
        )
    except GCError as exc:
        print(f"lmvp-server gc: {exc}", file=sys.stderr)
        return 1
    finally:
        engine.dispose()
    for line in report.lines():
        print(line)
    return 0


def _serve(args: argparse.Namespace, settings: Settings) -> int:
    import uvicorn

    from lmvp_server.app import create_app
    from lmvp_server.http_limits import BoundedHeadersProtocol

    logging.basicConfig(level=args.log_level.upper(), format=LOG_FORMAT)
    settings.prepare_dirs()
    # A blob store that cannot work (bad credentials, no bucket) stops the server here, naming
    # what to fix, rather than failing its first upload.
    try:
        open_blob_store(settings, check=True)
    except BlobStoreConfigError as exc:
        print(f"lmvp-server: cannot start: {exc}", file=sys.stderr, flush=True)
        return 2
    engine = make_engine(settings.effective_database_url, pool=(1, 1))
    sessions = make_sessionmaker(engine)
    # Several hosts may start at once: one at a time migrates and looks for the first admin,
    # so the schema is migrated once and the admin created once.
    with startup_lock(engine):
        apply_migrations(engine)
        first_login = _ensure_initial_admin(settings, sessions)
    engine.dispose()
    _warn_if_pool_too_large(settings)
    url = f"http://{_url_host(settings.host)}:{settings.port}"
    print(f"LMVP server {__version__} on {url}", flush=True)
    print(f"  data: {settings.data_dir}   database: {_safe_url(settings)}", flush=True)
    if settings.s3_location is not None:
        where = settings.s3_endpoint_url or "AWS S3"
        print(f"  blobs: {settings.s3_location} at {where}", flush=True)
    print(f"  API: {url}/api/v1/openapi.json   docs: {url}/api/v1/docs", flush=True)
    if first_login:
        print(first_login.replace("{url}", url), flush=True)
    if args.workers > 1:
        uvicorn.run(
            "lmvp_server.app:app_from_env",
            factory=True,
            host=settings.host,
            port=settings.port,
            workers=args.workers,
            log_level=args.log_level,
            # Workers are new processes: the logging set up here is not theirs, so uvicorn
            # sets it up in each from this dict (else only its access lines would show).
            log_config=_log_config(args.log_level),
            server_header=False,
            http=BoundedHeadersProtocol,
            ws="none",  # no endpoint speaks WebSocket; also spares importing a library
        )
    else:
        uvicorn.run(
            create_app(settings, migrate=False),
            host=settings.host,
            port=settings.port,
            log_level=args.log_level,
            log_config=_log_config(args.log_level),
            server_header=False,
            http=BoundedHeadersProtocol,
            ws="none",  # no endpoint speaks WebSocket; also spares importing a library
        )
    return 0


def _blobs_migrate(args: argparse.Namespace, settings: Settings) -> int:
    """Copy the local store into the bucket `--to` names, then say what to set."""
    from lmvp_server.blob_migrate import migrate_blobs
    from lmvp_server.s3 import S3Location, S3LocationError
    from lmvp_server.s3_store import S3BlobStore

    try:
        location = S3Location.parse(args.to)
    except S3LocationError as exc:
        print(f"lmvp-server blobs migrate: {exc}", file=sys.stderr)
        return 2
    target_settings = settings.model_copy(update={"blob_store": str(location)})
    target = S3BlobStore.from_settings(target_settings)
    try:
        target.check(create_bucket=settings.s3_create_bucket)
        report = migrate_blobs(settings.blob_dir, target, sys.stdout)
    except (BlobStoreConfigError, StoreUnavailable) as exc:
        print(f"lmvp-server blobs migrate: {exc}; run it again to go on", file=sys.stderr)
        return 2
    print(f"copied {report.copied} blobs, {report.skipped} were already in {location}", flush=True)
    if report.damaged:
        print(
            f"{len(report.damaged)} local blobs are damaged and were not copied: "
            + ", ".join(report.damaged),
            file=sys.stderr,
        )
        return 1
    settings_lines = [f"LMVP_BLOB_STORE={location}"]
    if settings.s3_endpoint_url:
        settings_lines.append(f"LMVP_S3_ENDPOINT_URL={settings.s3_endpoint_url}")
    if settings.s3_region:
        settings_lines.append(f"LMVP_S3_REGION={settings.s3_region}")
    print(
        "To serve from the bucket: stop the server, run this command again (it copies only "
        "blobs that arrived meanwhile), then start the server with\n  "
        + "\n  ".join(settings_lines)
        + "\nand the same AWS credentials. The local blobs stay until you delete "
        f"{settings.blob_dir}.",
        flush=True,
    )
    return 0


def _log_config(level: str) -> dict[str, Any]:
    """uvicorn's own logging, plus the application's lines (the root logger) on stderr."""
    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    config["formatters"]["lmvp"] = {"format": LOG_FORMAT}
    config["handlers"]["lmvp"] = {
        "class": "logging.StreamHandler",
        "formatter": "lmvp",
        "stream": "ext://sys.stderr",
    }
    config["root"] = {"handlers": ["lmvp"], "level": level.upper()}
    # Alembic, imported by each worker, says at INFO which of its plugins it set up.
    config["loggers"]["alembic.runtime.plugins"] = {"level": "WARNING"}
    return config


def _warn_if_pool_too_large(settings: Settings) -> None:
    if not settings.effective_database_url.startswith("postgresql"):
        return
    size, overflow = settings.database_pool()
    most = settings.workers * (size + overflow + 1) + 1
    if most > DATABASE_CONNECTION_BUDGET:
        logging.getLogger(__name__).warning(
            "%d workers may open up to %d connections to PostgreSQL (pool %d + overflow %d "
            "each, 1 event listener each, and 1 at start-up): more than the %d that fit its "
            "default max_connections (100) with room to spare; lower LMVP_DB_POOL_SIZE / "
            "LMVP_DB_MAX_OVERFLOW or the workers, or raise max_connections",
            settings.workers,
            most,
            size,
            overflow,
            DATABASE_CONNECTION_BUDGET,
        )


def _ensure_initial_admin(settings: Settings, sessions: object) -> str | None:
    """On a first start with no users, create `admin` with a random password and say how to log
    in; the password is also kept in a 0600 file in the data dir until someone deletes it.

    The password is printed at that start only: a service manager keeps what a server prints
    (the journal), so a later start names the file instead of repeating what is in it. The
    caller holds the start-up lock, so of several servers starting at once on one database
    exactly one creates the admin and writes the file; the others name the file."""
    secret_file = settings.data_dir / "initial-admin-password"
    created: str | None = None
    just_created_elsewhere = False
    with session_scope(sessions) as session:  # type: ignore[arg-type]
        users = session.scalar(select(func.count()).select_from(User)) or 0
        if users == 0 and settings.initial_admin:
            created = secrets.token_urlsafe(12)
            session.add(
                User(
                    username=INITIAL_ADMIN,
                    display_name="Administrator",
                    password_hash=hash_password(created),
                    is_admin=True,
                )
            )
        elif users == 1 and settings.initial_admin:
            admin = session.scalar(select(User).where(User.username == INITIAL_ADMIN))
            just_created_elsewhere = (
                admin is not None and utcnow() - admin.created_at < JUST_CREATED
            )
    if created is not None:
        # Written once the admin is committed, so the file never holds a password that
        # matches nothing.
        fd = os.open(secret_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.fchmod(fd, 0o600)  # O_CREAT keeps the mode of a file already there
        with os.fdopen(fd, "w") as f:
            f.write(created + "\n")
    if created is None:
        if not secret_file.exists():
            if just_created_elsewhere:
                return (
                    f"  first login: user '{INITIAL_ADMIN}' was created by another server "
                    "starting on this database;\n  its password is in the file "
                    f"'{secret_file.name}' in that server's data directory\n"
                    "  log in:  lmvp login {url}"
                )
            return None
        return (
            f"  first login: see {secret_file} (user '{INITIAL_ADMIN}', its password in that "
            "file;\n  delete the file once you have changed the password or made your own "
            "admin)\n"
            "  log in:  lmvp login {url}"
        )
    return (
        f"  first login: user '{INITIAL_ADMIN}', password '{created}' (also in {secret_file};\n"
        "  delete that file once you have changed it or made your own admin; this password is\n"
        "  printed at this first start only)\n"
        "  log in:  lmvp login {url}   or   curl -s -X POST {url}/api/v1/auth/login "
        "-H 'content-type: application/json' -d "
        + "'"
        + json.dumps({"username": INITIAL_ADMIN, "password": created})
        + "'"
    )


def _user_create(args: argparse.Namespace, settings: Settings) -> int:
    # The same rules as `POST /users`, checked before asking for a password.
    try:
        TypeAdapter(Username).validate_python(args.name)
    except ValidationError:
        print(
            f"error: {args.name!r} cannot be a username: use up to 64 letters, digits, '.', '_' "
            "or '-', starting with a letter or digit",
            file=sys.stderr,
        )
        return 1
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\n")
    else:
        password = getpass.getpass(f"password for {args.name}: ")
        if getpass.getpass("again: ") != password:
            print("error: the passwords differ", file=sys.stderr)
            return 1
    try:
        UserCreate(username=args.name, password=password, display_name=args.display_name)
    except ValidationError as exc:
        problem = exc.errors()[0]
        field = ".".join(str(p) for p in problem["loc"])
        if field == "password":
            print("error: use a password of 8 to 1024 characters", file=sys.stderr)
        else:
            print(f"error: {field or 'input'}: {problem['msg']}", file=sys.stderr)
        return 1
    _, sessions = _open_db(settings)
    with session_scope(sessions) as session:  # type: ignore[arg-type]
        if session.scalar(select(User.id).where(User.username == args.name)) is not None:
            print(f"error: user '{args.name}' already exists", file=sys.stderr)
            return 1
        session.add(
            User(
                username=args.name,
                display_name=args.display_name,
                password_hash=hash_password(password),
                is_admin=args.admin,
            )
        )
    print(f"created {'admin ' if args.admin else ''}user '{args.name}'")
    return 0


def _token_create(args: argparse.Namespace, settings: Settings) -> int:
    _, sessions = _open_db(settings)
    with session_scope(sessions) as session:  # type: ignore[arg-type]
        user = session.scalar(select(User).where(User.username == args.user))
        if user is None:
            print(
                f"error: no user '{args.user}'; create it with `lmvp-server user create`",
                file=sys.stderr,
            )
            return 1
        expires = timedelta(days=args.expires_days) if args.expires_days else None
        _, secret = issue_token(
            session, user, name=args.name, scope=TokenScope(args.scope), expires_in=expires
        )
    print(secret)
    return 0


def _positive_int(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"{value} is not a positive number of days")
    return number


def _safe_url(settings: Settings) -> str:
    return make_engine(settings.effective_database_url).url.render_as_string(hide_password=True)


def _url_host(host: str) -> str:
    if host in ("0.0.0.0", ""):  # noqa: S104 - naming the wildcard, not binding to it
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host
