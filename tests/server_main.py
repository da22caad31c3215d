"""`lmvp-server` as the test servers run it: the real command line, app and database code, with
one difference: passwords are hashed with argon2id at its cheapest cost instead of the library's
default (64 MiB and three passes, about 0.2 s of CPU per hash and per login).

Almost every test makes users and logs them in, several hundred in a run; at the default cost
that was over a minute of the suite's time, spent proving nothing any test asks about. What the
tests do check is unchanged: the hashes are argon2id, a wrong password is refused, and a server
started as users start it (`python -m lmvp_server serve`, which tests/server/test_cli.py runs
unmodified) stores hashes at the default cost. Verifying reads the cost from the stored hash, so
this server also logs in users whose hashes the real CLI made.

Run as `python tests/server_main.py <lmvp-server arguments>`.
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as a script, this folder comes first on sys.path, where its test packages (server, client,
# web, ...) could shadow modules of the same names.
if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    del sys.path[0]

import argon2

# Cheapest parameters argon2 accepts for one lane: one pass over 8 KiB.
CHEAP_COST = {"time_cost": 1, "memory_cost": 8, "parallelism": 1}


class CheapPasswordHasher(argon2.PasswordHasher):
    """argon2.PasswordHasher whose defaults are the cheapest cost; explicit arguments still win."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        if not args:
            kwargs = {**CHEAP_COST, **kwargs}
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]


def main() -> int:
    # Before lmvp_server is imported, so that its module-level hasher is made from this class.
    argon2.PasswordHasher = CheapPasswordHasher  # type: ignore[misc]
    from lmvp_server.cli import main as server_main
    from lmvp_server.security import hash_password

    # Fail loudly, not slowly, if the server stops taking its hasher from argon2.PasswordHasher.
    assert "$m=8,t=1,p=1$" in hash_password("probe"), "cheap hashing did not take effect"
    return server_main()


if __name__ == "__main__":
    raise SystemExit(main())
