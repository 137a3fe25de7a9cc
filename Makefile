# Entry points for people and CI. Every target that needs the environment runs
# scripts/setup.sh first; it is idempotent and takes well under a second when
# nothing changed.

VENV   := .venv
BAZEL  ?= bazel
ARGS   ?=

.DEFAULT_GOAL := help
.PHONY: help setup run test

help:
	@echo "edgepipe make targets:"
	@echo "  make setup              install Debian packages, create $(VENV), install requirements"
	@echo "  make run [ARGS='...']   setup, then '$(VENV)/bin/edgepipe run ARGS'"
	@echo "  make test               setup, then pytest (tests/) and 'bazel test //...'"

setup:
	@bash scripts/setup.sh

run: setup
	$(VENV)/bin/edgepipe run $(ARGS)

# Both suites always run, so one failing does not hide the other's results; the
# target fails if either failed. pytest exits with 5 when it collects no tests:
# a suite that silently vanished is a failure too, so any non-zero status counts.
# pytest-xdist runs one test file per core at a time (a file's module fixtures are
# built once, in one worker).
test: setup
	@status=0; \
	$(VENV)/bin/python -m pytest -q -n auto --dist loadfile tests || status=1; \
	$(BAZEL) test //... || status=1; \
	exit $$status
