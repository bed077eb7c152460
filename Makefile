# The README's two commands. Each one first brings .venv up to date (idempotent; a second
# run installs nothing): see tools/setup_env.sh.
PY := .venv/bin/python

.PHONY: setup test demo

setup:
	bash tools/setup_env.sh

test: setup
	$(PY) -m pytest -q

demo: setup
	$(PY) tools/demo.py
