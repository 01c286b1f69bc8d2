# The two quick-start commands. Each creates or refreshes .venv on its own.
#   make demo   embedded broker + SQLite + simulated traffic + live view (Ctrl-C stops)
#   make test   the whole test suite (starts its own broker and Redis)

PYTHON ?= python3
VENV   := .venv
STAMP  := $(VENV)/.installed

.PHONY: demo test lint bench redis clean

$(STAMP): pyproject.toml
	@test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VENV)/bin/python -m pip install --quiet -e '.[dev,train]'
	@touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/tailor up

redis:
	@command -v redis-server >/dev/null || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null; \
	  else echo "redis-server is missing: sudo apt-get install redis-server" >&2; exit 1; fi; }

# ruff (lint and format) and the import-linter contracts of pyproject.toml (the layers).
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports

test: $(STAMP) redis
	$(VENV)/bin/python -m pytest -q

bench: $(STAMP)
	@command -v wrk >/dev/null || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null; \
	  else echo "wrk is missing (tailor bench api skips its peak runs without it): sudo apt-get install wrk" >&2; fi; }
	$(VENV)/bin/tailor bench ingest
	$(VENV)/bin/tailor bench freshness

clean:
	rm -rf $(VENV) feature_repo/data
