# Set-up, tests and the main job. Everything installs into $(VENV), at the
# versions pinned in constraints.txt.
VENV ?= .venv
PYTHON := $(VENV)/bin/python
PIP := $(PYTHON) -m pip install -q -c constraints.txt
TESTS ?= tests
PYTEST := $(PYTHON) -m pytest -q -p no:cacheprovider

.PHONY: install install-study check test test-pytest bazel-test study curves data constraints

$(PYTHON):
	python3 -m venv $(VENV)
	$(PYTHON) -m pip install -q --upgrade pip

# The study needs TensorFlow (CPU) and the recipes extra, nothing more.
install-study: $(VENV)/.study
$(VENV)/.study: setup.py constraints.txt | $(PYTHON)
	$(PIP) -e '.[tensorflow-cpu,recipes]'
	touch $@

# The tests need every backend. torch is pinned first: an unpinned torch
# would pull a multi-GB CUDA build from the registry, where a CPU build of
# 2.13.0 may be at hand in pip's local wheel directory. constraints.txt pins
# versions without local labels (`2.13.0`, not `2.13.0+cpu`, which PyPI cannot
# serve): `==2.13.0` accepts a local CPU build, and PyPI's elsewhere.
install: $(VENV)/.installed
$(VENV)/.installed: setup.py constraints.txt | $(PYTHON)
	$(PIP) torch==2.13.0
	$(PIP) -e '.[tensorflow-cpu,jax,torch,recipes,tfds,test]'
	touch $@

# Re-pin constraints.txt to the newest releases setup.py allows (then run make test).
constraints:
	rm -rf .venv-pin
	python3 -m venv .venv-pin
	.venv-pin/bin/pip install -q torch==2.13.0
	.venv-pin/bin/pip install -q -e '.[tensorflow-cpu,jax,torch,recipes,tfds,test]'
	{ head -2 constraints.txt; .venv-pin/bin/pip freeze | grep -v "keras_lars\|^#\|^-e" \
	  | sed -E 's/\+[[:alnum:].]+$$//' | sort -f; } > constraints.new
	mv constraints.new constraints.txt
	rm -rf .venv-pin

# Lint, then the whole suite on each backend: through Bazel, each test file a
# py_test target per backend it has tests for, one per core at a time (with pytest,
# one backend after the other, where Bazel cannot be had).
test: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	@if command -v bazel >/dev/null || [ "$$(id -u)" = 0 ]; then \
	  $(MAKE) --no-print-directory bazel-test; \
	else \
	  echo "No Bazel here (as root: apt-get install bazel-bootstrap bazel-rules-java):"; \
	  echo "the tests run with pytest instead, one backend after the other."; \
	  $(MAKE) --no-print-directory test-pytest; \
	fi

# The quick tier, after an edit (under 4 minutes on 2 cores): lint, the
# optimizer, schedule and configuration tests on every backend, and one tiny
# run of each recipe backend (and Keras's fit on PyTorch). `make test` is all.
CHECK_TESTS := tests/test_lars_numerics.py tests/test_schedule.py tests/test_recipe_config.py
check: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	KERAS_BACKEND=tensorflow $(PYTEST) $(CHECK_TESTS) tests/test_controller.py \
	  tests/test_imagenet_train.py::test_synthetic_data_needs_no_files
	KERAS_BACKEND=jax $(PYTEST) $(CHECK_TESTS) \
	  tests/test_imagenet_train_jax.py::test_synthetic_bfloat16_run
	KERAS_BACKEND=torch $(PYTEST) $(CHECK_TESTS) tests/test_fit.py

# Tests that do not apply to a backend skip there.
test-pytest: install
	KERAS_BACKEND=tensorflow $(PYTEST) $(TESTS)
	KERAS_BACKEND=jax $(PYTEST) $(TESTS)
	KERAS_BACKEND=torch $(PYTEST) $(TESTS)

# `bazel test //...`, offline, with Debian's Bazel 4.2.3: the repositories it
# would download come from third_party/bazel and Debian's bazel-rules-java, and
# Python is $(VENV). Bazel 4 takes no %workspace% in those flags, so they are
# written here, with absolute paths, to .bazelrc.local (which .bazelrc imports).
BAZEL_RULES_JAVA := /usr/share/bazel/rules/java
bazel-test: install
	@command -v bazel >/dev/null && test -d $(BAZEL_RULES_JAVA) || { \
	  echo "Installing Debian's bazel-bootstrap and bazel-rules-java (Bazel 4.2.3) for bazel test //..."; \
	  apt-get update -qq && apt-get install -y -qq bazel-bootstrap bazel-rules-java >/dev/null; }
	@printf '%s\n' \
	  "common --override_repository=rules_cc=$(CURDIR)/third_party/bazel/rules_cc" \
	  "common --override_repository=rules_java=$(BAZEL_RULES_JAVA)" \
	  "common --override_repository=remote_coverage_tools=$(CURDIR)/third_party/bazel/remote_coverage_tools" \
	  "build --python_path=$(CURDIR)/$(PYTHON)" \
	  "test --test_env=PYTHONPATH=$$($(PYTHON) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')" \
	  > .bazelrc.local
	status=0; bazel test //... || status=$$?; $(PYTHON) bazel/test_times.py; exit $$status

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

# Evidence that the ImageNet recipe learns (README): each model family on
# Fashion-MNIST written as an ImageNet tree, a preset scaled down.
curves: install-study data
	$(PYTHON) -m benchmarks.learning_curves
