# The two commands a newcomer needs: `make run` and `make test`. Both install what is missing
# first: Debian packages (when run as root; otherwise the exact apt line is printed), a
# virtual environment in .venv, and the project with its extras.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# python3-venv: Debian's python3 cannot make a venv without it. postgresql: the server tests
# run on PostgreSQL as well as SQLite. The rest is what Qt (the desktop app, also offscreen in
# the tests) needs on a bare Debian: libdbus-1-3 just to import PySide6, a font so that text is
# not boxes, and dbus for the session bus the notification tests talk to.
APT_PACKAGES := python3 python3-venv python3-dev postgresql \
	libegl1 libgl1 libglib2.0-0 libfontconfig1 libdbus-1-3 libxkbcommon0 fonts-dejavu-core dbus chromium
STAMP := $(VENV)/.installed

.PHONY: run test setup system-deps lint typecheck bench clean

# The desktop app on a local server, with a simulated training job in a watched demo folder;
# without a display it says so and runs the server, the daemon and the demo headless.
run: setup
	$(BIN)/lmvp-desktop --demo

test: setup lint typecheck
	LMVP_REQUIRE_POSTGRES=$${CI:+1} $(BIN)/pytest

setup: system-deps $(STAMP)

system-deps:
	@missing=""; for p in $(APT_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing Debian packages:$$missing"; \
	    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $$missing; \
	  else \
	    echo "missing Debian packages; install them with:"; \
	    echo "  sudo apt-get install -y$$missing"; \
	    exit 1; \
	  fi; \
	fi

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $@

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: setup
	$(BIN)/mypy --no-incremental

bench: setup
	$(BIN)/python bench/transfer.py
	$(BIN)/python bench/versions.py
	$(BIN)/python bench/daemon.py
	$(BIN)/python bench/metrics.py
	$(BIN)/python bench/web.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
