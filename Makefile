# The two commands a newcomer needs: `make run` and `make test`. Both install what is missing
# first: Debian packages (when run as root; otherwise the exact apt line is printed), a
# virtual environment in .venv, and the project with its extras.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Everything `make test` and `make run` need on a minimal Debian 12 (`debootstrap
# --variant=minbase` plus git and make); `make fresh-check` proves the list there.
# - python3-venv: Debian's python3 cannot make a venv without it.
# - postgresql: the server tests run on PostgreSQL as well as SQLite (their own clusters;
#   see system-deps for the system cluster Debian would create).
# - Qt offscreen (the desktop tests): libdbus-1-3 just to import PySide6, libegl1 libgl1
#   libglib2.0-0 libfontconfig1 libxkbcommon0, and a font so that text is not boxes.
# - dbus: the session bus the notification tests talk to; libglib2.0-bin: their `gdbus`.
# - chromium: the web console's browser tests; libatomic1: Playwright's node driver.
# - Qt on a real X display (`make run` with DISPLAY set): the xcb platform plugin's libraries,
#   all of them (Qt's own message names only libxcb-cursor0, whatever is missing).
# - xvfb xauth: an X server for the window check in `make fresh-check` and for headless
#   machines that want the real window (`xvfb-run make run`).
# - libwayland-*: Qt's wayland platform, which Qt picks on a Wayland desktop.
# - at-spi2-core python3-pyatspi: the accessibility bus and Debian's pyatspi, through which the
#   desktop acceptance tests (tests/desktop/test_xvfb_acceptance.py) read the window on Xvfb.
# - nginx: the fleet tests run deploy/nginx/lmvp.conf in an nginx of their own (tests/nginx.py);
#   see system-deps for the system nginx Debian would start.
APT_PACKAGES := python3 python3-venv python3-dev postgresql \
	libegl1 libgl1 libglib2.0-0 libfontconfig1 libdbus-1-3 libxkbcommon0 fonts-dejavu-core \
	dbus libglib2.0-bin chromium libatomic1 \
	libxcb-cursor0 libxcb-icccm4 libxcb-image0 libxcb-keysyms1 libxcb-render-util0 \
	libxcb-shape0 libxcb-xkb1 libxkbcommon-x11-0 libxcb-randr0 libxcb-xinerama0 \
	libwayland-client0 libwayland-cursor0 libwayland-egl1 \
	xvfb xauth at-spi2-core python3-pyatspi nginx
STAMP := $(VENV)/.installed

.PHONY: run test setup system-deps lint typecheck bench bench-deps bench-wire clean fresh-check fuzz stress fleet

# The desktop app on a local server, with a simulated training job in a watched demo folder;
# without a display it says so and runs the server, the daemon and the demo headless.
run: setup
	$(BIN)/lmvp-desktop --demo

test: setup lint typecheck
	LMVP_REQUIRE_POSTGRES=$${CI:+1} $(BIN)/pytest

# The API fuzzed against its OpenAPI document for longer than the minute `make test` gives it
# (LMVP_FUZZ_SECONDS, default 10 minutes; LMVP_FUZZ_SEED for another seed).
fuzz: setup
	LMVP_FUZZ_SECONDS=$${LMVP_FUZZ_SECONDS:-600} $(BIN)/pytest -n0 -s tests/server/test_fuzz.py

# The long stress runs: the metric readers at full length (200 seeded rounds per format of a job
# writing while the reader polls and restarts; `make test` runs 20), 100 quits of the desktop
# app (8 in `make test`), and the GC tests (race and crash included) on all four database and
# store pairs (`make test` runs two: local + SQLite, S3 + PostgreSQL).
# LMVP_STRESS_SEED gives the metric readers other seeds.
stress: setup
	LMVP_STRESS_ROUNDS=$${LMVP_STRESS_ROUNDS:-200} $(BIN)/pytest -n0 -s tests/daemon/test_metric_stress.py
	LMVP_QUIT_ROUNDS=100 $(BIN)/pytest -n0 tests/desktop/test_quit_crash.py
	LMVP_GC_FULL_MATRIX=1 $(BIN)/pytest -n0 tests/server/test_gc.py tests/server/test_gc_safety.py

# The fleet tests (tests/fleet: the shipped nginx site over HTTPS in front of several servers on
# PostgreSQL) at the sizes issue 15 names: a 200 MB upload cut mid-way, 400 versions committed
# while 8 streams listen (`make test` runs them at 96 MB and 200 versions).
fleet: setup
	LMVP_FLEET_UPLOAD_MB=200 LMVP_FLEET_EVENT_VERSIONS=400 $(BIN)/pytest -n0 tests/fleet

setup: system-deps $(STAMP)

# Installing Debian's postgresql also creates and starts a system cluster ("main") that the
# tests never use: where PostgreSQL is new, a createcluster.d drop-in stops that first (an
# existing PostgreSQL set-up, and any cluster in it, is left as it is). Likewise installing
# nginx starts and enables a system nginx on port 80: where nginx is new, it is stopped and
# disabled again right after (an nginx that was already here is left as it is).
system-deps:
	@missing=""; for p in $(APT_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  new_nginx=""; \
	  if ! dpkg-query -W -f='$${Status}' nginx-common 2>/dev/null | grep -q "ok installed"; then \
	    new_nginx=1; \
	  fi; \
	  no_cluster=""; \
	  if ! dpkg-query -W -f='$${Status}' postgresql-common 2>/dev/null | grep -q "ok installed" \
	     && ! ls /etc/postgresql/*/*/postgresql.conf >/dev/null 2>&1; then \
	    no_cluster=/etc/postgresql-common/createcluster.d/lmvp-no-main-cluster.conf; \
	  fi; \
	  if [ "$$(id -u)" = 0 ]; then \
	    if [ -n "$$no_cluster" ]; then \
	      echo "PostgreSQL is new here: $$no_cluster stops Debian from creating a system cluster the tests never use"; \
	      mkdir -p "$$(dirname $$no_cluster)"; \
	      printf '%s\n' "# Written by LMVP's make: the tests run their own clusters. Delete this file" \
	        "# before installing PostgreSQL for your own use if you want Debian's main cluster." \
	        "create_main_cluster = false" > "$$no_cluster"; \
	    fi; \
	    echo "installing Debian packages:$$missing"; \
	    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $$missing || exit 1; \
	    if [ -n "$$new_nginx" ]; then \
	      echo "nginx is new here: stopping and disabling the system nginx the tests never use (they run their own)"; \
	      if [ -d /run/systemd/system ]; then systemctl disable --now nginx.service; \
	      else for c in "invoke-rc.d nginx stop" "update-rc.d nginx disable" "deb-systemd-helper disable nginx.service"; do \
	        $$c >/dev/null 2>&1 || true; done; fi; \
	    fi; \
	  else \
	    echo "missing Debian packages; install them with:"; \
	    if [ -n "$$no_cluster" ]; then \
	      echo "  sudo mkdir -p $$(dirname $$no_cluster)"; \
	      echo "  echo 'create_main_cluster = false' | sudo tee $$no_cluster  # no unused system PostgreSQL cluster"; \
	    fi; \
	    echo "  sudo apt-get install -y$$missing"; \
	    if [ -n "$$new_nginx" ]; then \
	      echo "  sudo systemctl disable --now nginx  # no unused system nginx on port 80"; \
	    fi; \
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

# The benches' own tools, which `make test` does not need: wrk, the HTTP load generator of
# bench/scale.py (installed with apt when root, as system-deps does; else the apt line);
# iproute2 (ip netns, tc) for bench/wire.py's shaped link; and MLflow, bench/wire.py's
# baseline, in a venv of its own (its pins must not move the project's packages).
BENCH_APT_PACKAGES := wrk iproute2
MLFLOW_VENV := .venv-mlflow

bench-deps:
	@missing=""; for p in $(BENCH_APT_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing Debian packages for the benches:$$missing"; \
	    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $$missing || exit 1; \
	  else \
	    echo "missing Debian packages for the benches; install them with:"; \
	    echo "  sudo apt-get install -y$$missing"; \
	    exit 1; \
	  fi; \
	fi
	test -x $(MLFLOW_VENV)/bin/mlflow || { $(PYTHON) -m venv $(MLFLOW_VENV) && \
	  $(MLFLOW_VENV)/bin/python -m pip install -q "mlflow>=3,<4"; }

bench: setup bench-deps
	$(BIN)/python bench/transfer.py
	$(BIN)/python bench/versions.py
	$(BIN)/python bench/daemon.py
	$(BIN)/python bench/metrics.py
	$(BIN)/python bench/web.py
	$(BIN)/python bench/scale.py

# Issue 17's bytes on the wire against MLflow on a shaped 400 Mbit/s link (bench/wire.py): as
# root (a network namespace of its own), about 15 minutes, ~6.5 GiB in the temp dir.
bench-wire: setup bench-deps
	$(BIN)/python bench/wire.py

# `make test` and `make run` in a fresh minimal Debian 12 root (debootstrap; as root; ~7 min
# on 2 quiet cores): proves APT_PACKAGES and the rest of the set-up. `.ci/run` runs it too.
fresh-check:
	.ci/fresh-check

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
