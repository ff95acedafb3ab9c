# Everything a fresh clone needs: `make demo` (train + evaluate + report) and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# Where the offline CIFAR-10 binary layout and the TFDS datasets live (override freely).
DATA_ROOT ?= $(CURDIR)/data
export ADAPTIVE_JAX_MANUAL_DIR ?= $(DATA_ROOT)/manual
export TFDS_DATA_DIR ?= $(DATA_ROOT)/tfds
# The bundled CIFAR-10 copy, when this clone sits beside it; elsewhere TFDS downloads it.
PREPARE ?= $(wildcard $(CURDIR)/../shared/data/cifar10/prepare)
WORKDIR ?= runs/demo
CONFIG ?= experiments/ofas/configs/default.py
BASELINE_CONFIG ?= experiments/baseline/configs/default.py
FLAGS ?=

.PHONY: install install-bench data demo demo-baseline demo-full test bench clean

install: $(VENV)/.installed
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

install-bench: install
	$(PY) -m pip install -q -e '.[test,benchmark]'

data: install
ifneq ($(PREPARE),)
	$(PY) $(PREPARE) $(ADAPTIVE_JAX_MANUAL_DIR)
else
	@echo "no bundled CIFAR-10 beside this clone: TFDS downloads it on first use into $(TFDS_DATA_DIR)"
endif

# The adaptive model: OFAS ResNet-32, stage A then stage B at three penalties.
demo: data
	$(PY) -m experiments.ofas.main --workdir=$(WORKDIR) --config=$(CONFIG) $(FLAGS)

# The static ResNet-20 it is compared with (the foundation's demo recipe).
demo-baseline: data
	$(PY) -m experiments.baseline.main --workdir=runs/demo_baseline --config=$(BASELINE_CONFIG) $(FLAGS)

# The CPU recipe (15 epochs of ResNet-20): hours on 2 CPU cores, minutes on a GPU.
demo-full: data
	$(PY) -m experiments.baseline.main --workdir=runs/cpu_recipe --config=$(BASELINE_CONFIG):cpu $(FLAGS)

test: install
	$(PY) -m pytest -q --durations=15

bench: install-bench data
	$(PY) -m benchmarks.resnet_speed $(FLAGS)

clean:
	rm -rf runs .pytest_cache
