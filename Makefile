# homehub — `make` alone prints this help.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.homehub-installed

.DEFAULT_GOAL := help
.PHONY: help install-deps demo test lint format bench install uninstall pi-check clean

help: ## this help
	@echo "homehub make targets:"
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-13s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml contract/pyproject.toml backend/pyproject.toml scripts/bootstrap.sh
	bash scripts/bootstrap.sh

install-deps: $(STAMP) ## mosquitto (apt) + .venv with homehub and its dev extras

demo: $(STAMP) ## hub on simulated devices -> private broker -> backend -> private PostgreSQL; Ctrl-C stops
	$(PY) -m gateway demo --config config/demo.toml

test: $(STAMP) ## run the test suite (real mosquitto on loopback, ~minutes)
	$(PY) -m pytest -n 2 -q

lint: $(STAMP) ## ruff + mypy strict on gateway/, contract/, backend/
	$(VENV)/bin/ruff check gateway contract backend tests bench
	$(VENV)/bin/ruff format --check gateway contract backend tests bench
	$(VENV)/bin/mypy

format: $(STAMP) ## apply ruff's formatting and safe fixes
	$(VENV)/bin/ruff check --fix gateway contract backend tests bench
	$(VENV)/bin/ruff format gateway contract backend tests bench

bench: $(STAMP) ## benchmarks (ratios against baselines measured in the same run)
	$(PY) -m bench

install: ## (root) install as a service: /opt/homehub, unit, user; keeps /etc/homehub
	bash scripts/install.sh

uninstall: ## (root) remove program and unit; keep config and data
	bash scripts/uninstall.sh

# Where the emulated Pi roots are built once and cached (scripts/pi-root-check.sh).
PI_ROOT_CACHE ?= /var/cache/homehub-piroot

pi-check: ## (root, slow) make install + run in emulated arm64 and armhf roots (docs/INSTALL.md)
	@rc=0; for arch in arm64 armhf; do \
		PI_ROOT_CACHE="$(PI_ROOT_CACHE)" bash scripts/pi-root-check.sh $$arch || rc=1; \
	done; exit $$rc

clean: ## remove the virtualenv and caches
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build *.egg-info
