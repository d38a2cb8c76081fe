# `make demo` and `make test` set everything up from a fresh clone (no network but the package index).
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH ?= torch==2.13.0
STAMP := $(VENV)/.vidcurate-installed

.PHONY: setup demo test clean

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch in the same command as the project: pip then picks the torchvision that matches it
	# instead of upgrading torch to whatever the newest torchvision asks for.
	$(PY) -m pip install --quiet --no-cache-dir "$(TORCH)" -e ".[test]"
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(PY) -m pipeline prepare-demo --root data/demo
	$(PY) -m pipeline run jobs/demo.yaml

test: setup
	$(PY) -m pytest -q -p no:cacheprovider

clean:
	rm -rf out data
