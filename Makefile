# make test        - create .venv if missing, install, run the test suite (slow tests left out)
# make test-slow   - the tests marked slow (tests/suite_cost.py); .ci/run runs both
# make quickstart  - create .venv if missing, train an SE network on the offline digits dataset
# make bench       - speed benchmark against timm (README.md, "Speed"; docs/speed.md)
# make bench-separate - the same, training at 224 px x 16, each framework in its own processes
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# The runtime requirements alone (make quickstart); STAMP adds the test ones (torch, timm).
RUNTIME_STAMP := $(VENV)/.installed-runtime
# The allocator XLA:CPU needs (senet_jax/utils/allocator.py): jemalloc where installed, else
# mimalloc from pip (requirements.txt). main.py and `import senet_jax` restart themselves under
# it; pytest cannot be, so its variables are set here (expanded when the recipe runs, after the
# environment exists).
FAST_MALLOC_ENV = $(shell $(PY) -c 'from senet_jax.utils.allocator import print_env; print_env()' 2>/dev/null)
# Tests use both cores of the reference machine; override with `make test PYTEST_WORKERS=4`.
PYTEST_WORKERS ?= 2

.PHONY: test test-slow test-all quickstart bench bench-separate clean tf

# uv (from PyPI, into the venv) installs the requirements: parallel downloads and no per-file
# pip overhead make a fresh environment about twice as fast as pip (docs/tests.md).
UV := $(VENV)/bin/uv
# --compile-bytecode: the .pyc files are written once here. Without them every Python process
# (each test worker, each main.py subprocess of the tests) recompiles jax, torch and flax from
# source when the environment sets PYTHONDONTWRITEBYTECODE=1: ~8 s of CPU per process, which
# doubled `make test` on such a machine (docs/tests.md).
UV_INSTALL = $(UV) pip install -q --compile-bytecode --python $(PY)

$(RUNTIME_STAMP): requirements.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	@test -x $(UV) || $(PY) -m pip install -q 'uv>=0.5'
	$(UV_INSTALL) -r requirements.txt
	$(UV_INSTALL) --no-deps -e .  # the package itself: `import senet_jax` outside the clone
	@touch $(RUNTIME_STAMP)

$(STAMP): $(RUNTIME_STAMP) requirements-test.txt requirements-tf.txt
	$(UV_INSTALL) -r requirements-test.txt
	@touch $(STAMP)

# The optional TensorFlow extra (requirements-tf.txt): the tf.data backend and SavedModel /
# TFLite / ONNX export. Training (grain), evaluation and the offline datasets do without it.
TF_STAMP := $(VENV)/.installed-tf
$(TF_STAMP): $(RUNTIME_STAMP) requirements-tf.txt
	$(UV_INSTALL) -r requirements-tf.txt
	@touch $(TF_STAMP)

tf: $(TF_STAMP)

# worksteal: an idle worker takes queued tests from the busy one, so one long test near the end
# does not leave a core idle.
PYTEST = env $(FAST_MALLOC_ENV) $(PY) -m pytest -n $(PYTEST_WORKERS) --dist worksteal

test: $(STAMP)
	$(PYTEST) -m "not slow"

test-slow: $(STAMP)
	$(PYTEST) -m slow

test-all: $(STAMP)
	$(PYTEST)

quickstart: $(RUNTIME_STAMP)
	$(PY) main.py --config=configs/quickstart.py --workdir=workdir/quickstart

bench: $(STAMP)
	$(PY) benchmarks/train_step.py

bench-separate: $(STAMP)
	$(PY) benchmarks/train_step.py --mode=train --shapes=224x16 --rounds=3

# make data-fashion - Fashion-MNIST for the SE ablations (docs/evidence.md), offline once
# installed: apt-get installs Debian's dataset-fashion-mnist (the four idx files, 30 MB, in
# /usr/share/datasets/fashion-mnist; sudo unless root), then senet_jax.data.fashion_mnist
# converts them into the TFDS dataset senet_fashion_mnist (ArrayRecord, 43 MB, ~40 s) in
# ~/tensorflow_datasets, or FASHION_DATA_DIR (then pass it as --config.data_dir).
.PHONY: data-fashion
data-fashion: $(RUNTIME_STAMP)
	@test -d /usr/share/datasets/fashion-mnist || { S=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  $$S apt-get update -q && $$S apt-get install -y dataset-fashion-mnist; }
	$(PY) -m senet_jax.data.fashion_mnist $(if $(FASHION_DATA_DIR),--data_dir=$(FASHION_DATA_DIR))

clean:
	rm -rf $(VENV) workdir
