# Set-up, tests and the main job. Everything installs into $(VENV).
VENV ?= .venv
PYTHON := $(VENV)/bin/python
TESTS ?= tests
PYTEST := $(PYTHON) -m pytest -q -p no:cacheprovider

.PHONY: install test study

install: $(VENV)/.installed

# torch is pinned first: this machine keeps a CPU build of 2.13.0 on disk, and
# an unpinned torch would pull a multi-GB CUDA build from the registry.
$(VENV)/.installed: setup.py
	python3 -m venv $(VENV)
	$(PYTHON) -m pip install -q --upgrade pip
	$(PYTHON) -m pip install -q torch==2.13.0
	$(PYTHON) -m pip install -q -e '.[tensorflow-cpu,jax,torch,study,test]'
	touch $@

# The whole suite on TensorFlow, then again on JAX and PyTorch (tests that need
# TensorFlow itself skip there).
test: install
	KERAS_BACKEND=tensorflow $(PYTEST) $(TESTS)
	KERAS_BACKEND=jax $(PYTEST) $(TESTS)
	KERAS_BACKEND=torch $(PYTEST) $(TESTS)
