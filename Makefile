# Set-up, tests and the main job. Everything installs into $(VENV), at the
# versions pinned in constraints.txt.
VENV ?= .venv
PYTHON := $(VENV)/bin/python
PIP := $(PYTHON) -m pip install -q -c constraints.txt
TESTS ?= tests
PYTEST := $(PYTHON) -m pytest -q -p no:cacheprovider

.PHONY: install install-study test study data constraints

$(PYTHON):
	python3 -m venv $(VENV)
	$(PYTHON) -m pip install -q --upgrade pip

# The study needs TensorFlow (CPU) and the study extra, nothing more.
install-study: $(VENV)/.study
$(VENV)/.study: setup.py constraints.txt | $(PYTHON)
	$(PIP) -e '.[tensorflow-cpu,study]'
	touch $@

# The tests need every backend. torch is pinned first: this machine keeps a
# CPU build of 2.13.0 on disk, and an unpinned torch would pull a multi-GB CUDA
# build from the registry.
install: $(VENV)/.installed
$(VENV)/.installed: setup.py constraints.txt | $(PYTHON)
	$(PIP) torch==2.13.0
	$(PIP) -e '.[tensorflow-cpu,jax,torch,study,tfds,test]'
	touch $@

# Re-pin constraints.txt to the newest releases setup.py allows (then run make test).
constraints:
	rm -rf .venv-pin
	python3 -m venv .venv-pin
	.venv-pin/bin/pip install -q torch==2.13.0
	.venv-pin/bin/pip install -q -e '.[tensorflow-cpu,jax,torch,study,tfds,test]'
	{ head -2 constraints.txt; .venv-pin/bin/pip freeze | grep -v "keras_lars\|^#\|^-e" | sort -f; } > constraints.new
	mv constraints.new constraints.txt
	rm -rf .venv-pin

# Lint, then the whole suite on TensorFlow, and again on JAX and PyTorch
# (tests that need TensorFlow itself, and the wheel's, run once).
test: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	KERAS_BACKEND=tensorflow $(PYTEST) $(TESTS)
	KERAS_BACKEND=jax $(PYTEST) $(TESTS)
	KERAS_BACKEND=torch $(PYTEST) $(TESTS)

# Fashion-MNIST from Debian's package (31 MB, no download at run time).
FASHION_MNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
data:
	@test -f $(FASHION_MNIST) || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "Installing Debian's dataset-fashion-mnist (31 MB): the study's data, Fashion-MNIST."; \
	    apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist; \
	  else \
	    echo "Fashion-MNIST is missing. Run: sudo apt-get install dataset-fashion-mnist"; \
	    echo "or: make study STUDY_ARGS=--data_dir=DIR (DIR with the four idx .gz files)"; \
	    exit 1; \
	  fi; }

# The main job: the large-batch study (README: how long it takes).
# STUDY_ARGS=--quick for a smoke run; --model=cnn,cnn_bn adds the batch-norm CNN.
study: install-study $(if $(findstring data_dir,$(STUDY_ARGS)),,data)
	$(PYTHON) -m recipes.large_batch_study $(STUDY_ARGS)
