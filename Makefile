# Set-up, tests and demos.  `make demo` and `make test` each do all set-up on a
# fresh machine: a local virtualenv with torch installed first (CPU build here,
# the platform default elsewhere), then this package and its dependencies.
PYTHON ?= python3
VENV ?= .venv
TORCH_VERSION ?= 2.13.0
MODE ?= quick
PY := $(VENV)/bin/python
STAMP := $(VENV)/.rdrop-seq-installed

.PHONY: install test demo demo-lm demo-cls clean

$(STAMP): setup.py pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install "torch==$(TORCH_VERSION)"
	echo "torch==$(TORCH_VERSION)" > $(VENV)/constraints.txt
	PIP_CONSTRAINT=$(abspath $(VENV)/constraints.txt) $(PY) -m pip install -e ".[test,demo,recipes]"
	touch $(STAMP)

install: $(STAMP)

# the tests in parallel (pytest-xdist), one worker per core, at most 4: run one
# at a time they kept about one of 2 cores busy; then the tests that compare code
# paths again under the SSE4.2, AVX2 and AVX-512 matrix kernels (tests/kernel_matrix.py)
test: install
	$(PY) -m pytest -n auto --maxprocesses 4 tests
	$(PY) -m tests.kernel_matrix

demo: install
	$(PY) -m examples.translation.demo --mode $(MODE)

demo-lm: install
	$(PY) -m examples.language_model.demo --mode $(MODE)

demo-cls: install
	$(PY) -m examples.classification.demo --mode $(MODE)

clean:
	rm -rf $(VENV) build *.egg-info
