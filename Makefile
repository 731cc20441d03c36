# Every target bootstraps itself: a .venv, the package with its dev extras, the data.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
CORE   := $(VENV)/.installed-core
STAMP  := $(VENV)/.installed

.PHONY: demo test test-quick lint bench bench-quality gpu-check data system clean help

help:
	@echo "make demo   - fetch MNIST, train, evaluate, write the report (runs/demo)"
	@echo "make test   - the whole test suite"
	@echo "make test-quick - lint and the quick offline tier (no network, no data download, < 60 s)"
	@echo "make lint   - ruff check and ruff format --check"
	@echo "make bench  - speed benchmarks (results appended to benchmarks/RESULTS.md)"
	@echo "make bench-quality - test NLL of configs/mnist-best.yaml after its 60 minutes of training (and at 15/30/45)"
	@echo "make gpu-check - on a CUDA machine: the cuda tests, train and eval speed on the GPU (benchmarks/gpu_check.sh)"

# The demo needs only the package; the tests, lint and benchmarks also its dev extras (a minute more to install).
$(CORE): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -c constraints.txt -e .
	touch $(CORE)

$(STAMP): $(CORE)
	$(PY) -m pip install -q -c constraints.txt -e '.[dev]'
	touch $(STAMP)

data: $(CORE)
	$(VENV)/bin/vaekit data fetch mnist

system:
	bash scripts/ensure-system-packages.sh

demo: data
	$(VENV)/bin/vaekit demo --out runs/demo

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: system data lint
	$(VENV)/bin/vaekit data fetch fashion-mnist
	$(PY) -m pytest -q --durations=15

# The quick tier: no network, no dataset download (synthetic data), under a minute; it prints its time.
test-quick: lint
	@t0=$$(date +%s); $(PY) -m pytest -q -m "not slow and not browser" --durations=5; rc=$$?; \
	echo "test-quick: $$(( $$(date +%s) - t0 )) s (tests only; budget 60 s)"; exit $$rc

bench: data $(STAMP)
	$(PY) benchmarks/train_speed.py
	$(PY) benchmarks/time_to_quality.py
	$(PY) benchmarks/eval_speed.py

bench-quality: data $(STAMP)
	$(PY) benchmarks/quality.py --trajectory 15,30,45

# Bootstraps .venv itself (or uses $$VAEKIT_PYTHON); results appended to benchmarks/RESULTS.md. Under 8 minutes.
gpu-check:
	PYTHON=$(PYTHON) bash benchmarks/gpu_check.sh

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache
