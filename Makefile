# One entry point for people and CI. `make run` and `make test` set up everything they need.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export OPENBLAS_NUM_THREADS := 1
export TF_USE_LEGACY_KERAS := 1

.PHONY: run test test-fast tools protos venv bench bench-train clean

venv: $(STAMP)

# The pinned dependencies of every role (trainer, query, index, gateway) and the test tools.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[trainer,query,index,dev]'
	touch $(STAMP)

# Train if no bundle exists (on DATA_DIR: any layout of the README's "Data layouts"; ML100K_DIR also works;
# neither: MovieLens 100k, downloaded once; TRAIN_ARGS: more trainer flags), start the three services,
# print Recommend(42, 10), serve until Ctrl-C.
run: venv
	$(PY) scripts/run_stack.py

# The whole test suite (what CI runs).
test: venv tools
	$(PY) -m pytest

# promtool (Debian's prometheus package) checks the alerting rules in tests/test_observability.py.
# About a minute the first time (as root: CI and the dev machines); nothing when present.
tools:
	command -v promtool >/dev/null || (apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y prometheus)

# Everything except the tests that train models or start servers.
test-fast: venv tools
	$(PY) -m pytest -m "not slow"

# Regenerate the Python stubs and the protoset from protos/recsys/**/*.proto.
protos: venv
	$(PY) protos/generate.py

# The benchmark (needs h2load: apt-get install nghttp2-client); writes bench/results/.
bench: venv
	$(PY) -m bench

# Training cost and quality at 1M/5M/25M interactions and a 1M-item catalog (synthetic logs; about an hour on 2 cores).
bench-train: venv
	$(PY) -m bench.train

clean:
	rm -rf $(VENV) logs .pytest_cache
