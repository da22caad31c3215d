"""Where the client finds its server and token, and where `lmvp login` keeps them.

Server: the argument, else `LMVP_SERVER`, else the server of the last `lmvp login`.
Token: the argument, else `LMVP_TOKEN`, else the system keyring (service `lmvp`, keyed by the
server URL), else a mode-0600 file in the user config dir: headless machines often have no
keyring, and the fallback says so once when it is first used.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import platformdirs

from lmvp._http import API_PREFIX
from lmvp.errors import ConfigurationError
from lmvp.private_files import write_private

log = logging.getLogger(__name__)

KEYRING_SERVICE = "lmvp"
_CONFIG_FILE = "config.json"
_TOKENS_FILE = "tokens.json"


def config_dir() -> Path:
    return Path(os.environ.get("LMVP_CONFIG_DIR") or platformdirs.user_config_dir("lmvp"))


def normalize_server(url: str) -> str:
    """`host:8470` → `http://host:8470`; no trailing slash; the API's own address
    (`http://host:8470/api/v1`, as the server's banner and docs show it) → the server's.

    Every way a server URL enters the client (`Client`, `Client.login`, `lmvp login`, the saved
    login, `LMVP_SERVER`, the desktop's login) passes through here."""
    url = url.strip().rstrip("/")
    if "://" not in url:
        url = "http://" + url
    return url.removesuffix(API_PREFIX).rstrip("/")


def resolve_server(server: str | None = None) -> str:
    """The server to talk to; raises `ConfigurationError` saying how to choose one."""
    chosen = server or os.environ.get("LMVP_SERVER") or _read_json(_CONFIG_FILE).get("server")
    if not chosen:
        raise ConfigurationError(
            "no LMVP server configured: run `lmvp login SERVER`, or set LMVP_SERVER "
            "(and LMVP_TOKEN) in the environment"
        )
    return normalize_server(chosen)


def resolve_token(server: str, token: str | None = None) -> str | None:
    """The token for `server`, or None when there is none (anonymous calls then get 401)."""
    if token:
        return token
    if env := os.environ.get("LMVP_TOKEN"):
        return env
    stored = _keyring_get(server)
    if stored:
        return stored
    return _read_json(_TOKENS_FILE).get(server)


def save_login(server: str, token: str) -> str:
    """Store the token for `server` and make it the default server. Returns where the token
    went: "the system keyring" or the fallback file's path."""
    server = normalize_server(server)
    config = _read_json(_CONFIG_FILE)
    config["server"] = server
    _write_json(_CONFIG_FILE, config)
    if _keyring_set(server, token):
        _forget_file_token(server)
        return "the system keyring"
    tokens = _read_json(_TOKENS_FILE)
    tokens[server] = token
    path = _write_json(_TOKENS_FILE, tokens)
    log.warning("no system keyring is available: the token is stored in %s (mode 0600)", path)
    return str(path)


def forget_login(server: str) -> bool:
    """Remove the stored token of `server`; True if there was one."""
    server = normalize_server(server)
    removed = _keyring_delete(server)
    removed = _forget_file_token(server) or removed
    config = _read_json(_CONFIG_FILE)
    if config.get("server") == server:
        config.pop("server")
        _write_json(_CONFIG_FILE, config)
    return removed


# --- keyring, tolerating machines without one ----------------------------------------------


def _keyring_get(server: str) -> str | None:
    try:
        import keyring
        from keyring.errors import KeyringError

        try:
            return keyring.get_password(KEYRING_SERVICE, server)
        except KeyringError:
            return None
    except Exception:  # a broken backend (D-Bus gone...) must not stop the client
        log.debug("keyring lookup failed", exc_info=True)
        return None


def _keyring_set(server: str, token: str) -> bool:
    try:
        import keyring
        from keyring.backends import fail, null

        backend = keyring.get_keyring()
        # The null backend accepts and forgets; the fail backend raises: neither stores.
        if isinstance(backend, fail.Keyring | null.Keyring):
            return False
        keyring.set_password(KEYRING_SERVICE, server, token)
        return True
    except Exception:
        log.debug("keyring store failed", exc_info=True)
        return False


def _keyring_delete(server: str) -> bool:
    try:
        import keyring

        keyring.delete_password(KEYRING_SERVICE, server)
        return True
    except Exception:
        return False


# --- the config dir ------------------------------------------------------------------------


def _forget_file_token(server: str) -> bool:
    tokens = _read_json(_TOKENS_FILE)
    if server not in tokens:
        return False
    del tokens[server]
    _write_json(_TOKENS_FILE, tokens)
    return True


def _read_json(name: str) -> dict[str, Any]:
    path = config_dir() / name
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_json(name: str, data: dict[str, Any]) -> Path:
    """Replace `name` in the config dir with `data`, readable by the user alone.

    The new content goes to a fresh temporary name (`mkstemp`: O_EXCL, mode 0600, so no file
    left there before, whatever its mode, is reused) and is renamed over the old file. A
    `<name>.tmp` left by an older lmvp, which opened that fixed name and kept its mode, is
    removed: it may hold an earlier token."""
    directory = config_dir()
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = write_private(directory / name, json.dumps(data, indent=2))
    path.with_suffix(".tmp").unlink(missing_ok=True)
    return path
