# The two set-up commands of the README: `make run` (the main job) and `make test` (the test suite).
VENV ?= .venv
ARGS ?=
PYTEST_ARGS ?=

.PHONY: setup run test
setup:
	bash scripts/setup.sh

run: setup
	$(VENV)/bin/latentcomm run $(ARGS)

test: setup
	$(VENV)/bin/python -m pytest -q $(PYTEST_ARGS)
