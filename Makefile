# Two set-up commands for a fresh Debian 12 machine, as root: `make demo` and `make test`.
# Both bootstrap on first use: Debian packages, a .venv, and the package with its extras.

PYTHON   ?= python3
VENV     := .venv
BIN      := $(VENV)/bin
STAMP    := $(VENV)/.installed
DURATION ?= 0
APT_PKGS := mosquitto mosquitto-clients tshark socat openssl gcc dbus iproute2
PYTEST_ARGS ?=

.PHONY: demo test bench lint bootstrap apt clean

demo: bootstrap
	$(BIN)/hil demo --config config/demo.yaml --duration $(DURATION)

test: bootstrap
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/pytest $(PYTEST_ARGS)

bench: bootstrap
	@for b in bench/*.py; do $(BIN)/python $$b || exit 1; done

lint: bootstrap
	$(BIN)/ruff check .
	$(BIN)/mypy

bootstrap: apt $(STAMP)

# Install only what is missing; the package's own start of mosquitto is refused in
# containers and not needed: tests and the demo start their own broker.
apt:
	@missing=""; \
	for p in $(APT_PKGS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	inc=$$($(PYTHON) -c 'import sysconfig; print(sysconfig.get_paths()["include"])'); \
	[ -f "$$inc/Python.h" ] || missing="$$missing python3-dev"; \
	$(PYTHON) -c 'import ensurepip, venv' 2>/dev/null || missing="$$missing python3-venv"; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi

$(STAMP): setup.cfg pyproject.toml
	[ -x $(BIN)/python ] || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev,gateway]'
	touch $(STAMP)

clean:
	rm -rf $(VENV) .demo build *.egg-info

.PHONY: install
# Install or upgrade on a gateway, as root (docs/install.md). Offline: INSTALL_ARGS="--pip-args
# '--no-index --find-links DIR'"; start too: INSTALL_ARGS=--enable.
install:
	sh scripts/install.sh $(INSTALL_ARGS)
