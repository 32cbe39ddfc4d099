# One entry point for people and CI. `make run` and `make test` set up everything they need.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export OPENBLAS_NUM_THREADS := 1
export TF_USE_LEGACY_KERAS := 1

.PHONY: run test test-fast protos venv bench clean

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
test: venv
	$(PY) -m pytest

# Everything except the tests that train models or start servers.
test-fast: venv
	$(PY) -m pytest -m "not slow"

# Regenerate the Python stubs and the protoset from protos/recsys/v1/*.proto.
protos: venv
	$(PY) protos/generate.py

# The benchmark (needs h2load: apt-get install nghttp2-client); writes bench/results/.
bench: venv
	$(PY) -m bench

clean:
	rm -rf $(VENV) logs .pytest_cache
