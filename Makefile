# Two commands for a fresh machine: `make run` (the bundle in the foreground on the default
# rig, API on 127.0.0.1:8000) and `make test`. Both set everything up first.
.PHONY: setup run test render bench

setup:
	runtime/setup.sh

run: setup
	.venv/bin/llamarig run

test:
	runtime/setup.sh --with-prometheus --with-docker --with-browser
	.venv/bin/python -m pytest -q -ra

render:
	.venv/bin/llamarig render

# Every benchmark (LiteLLM's column needs bench/setup-litellm.sh first): JSON in
# bench/results.json, the table on stdout (bench/RESULTS.md holds the latest, with its reading).
bench: setup
	.venv/bin/python bench/run.py
