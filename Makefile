# Two commands on a fresh machine (Python >= 3.10 and pip):
#   make demo   sets up .venv and runs the main job
#   make test   sets up .venv and runs the tests
# On machines with a local torch wheel cache (see README), torch comes from disk.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PEERS := $(VENV)/.peers

.PHONY: demo test lint venv clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first, pinned to the newest release the project allows, so pip takes it from a local
	# wheel cache where there is one instead of resolving a multi-GB build of its own choosing.
	$(PY) -m pip install --quiet "torch==2.14.1" "torchvision==0.29.1"
	$(PY) -m pip install --quiet -e ".[test]"
	touch $(STAMP)

# The peer libraries (Syne Tune, hpbandster, DEHB) only the tests and benchmarks/peers.py run:
# they take minutes to install, so the main job does without them.
$(PEERS): $(STAMP)
	$(PY) -m pip install --quiet -e ".[test,peers]"
	# DEHB pins numpy < 2 but runs on numpy 2: without its pins (its dependencies are in [peers]).
	$(PY) -m pip install --quiet --no-deps "dehb==0.1.2"
	touch $(PEERS)

# The main job: a search on the bundled MNIST digits (12 trials, Ne <= 6, the top 3 re-trained
# with 2 more seeds), then the report. Running it again resumes (finished trials are kept).
demo: $(STAMP)
	$(VENV)/bin/caetune search --name demo

# Two pytest-xdist workers: most tests wait on subprocesses (a search's Ray starting and stopping),
# so two at once use the two cores. Each takes whole files (module fixtures set up once), in
# collection order (tests/conftest.py puts the slow ones first).
test: $(PEERS)
	$(VENV)/bin/python -m pytest -n 2 --dist loadfile --no-loadscope-reorder

# Lint, format and types (configured in pyproject.toml); .ci/run runs it before the tests.
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy caetune

clean:
	rm -rf $(VENV) runs .pytest_cache
