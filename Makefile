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
PENALTY ?= 1
BASELINE_CONFIG ?= experiments/baseline/configs/default.py
FLAGS ?=

.PHONY: install install-bench data demo demo-train demo-scratch demo-baseline zoo-cpu test bench clean

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

# The adaptive model, trained: the zoo's OFAS ResNet-32 against the zoo's static ResNets on the
# whole test set (accuracy, MACs and their spread, plans, batch-1 / batch-64 timings, plots).
demo: data
	$(PY) -m experiments.ofas.demo --out=$(WORKDIR) $(FLAGS)

# The same table for an OFAS model fine-tuned here from the zoo's ResNet-32 (stage B at PENALTY,
# and the static sub-net it is compared with); without the pooled cascade's timing (~25 s, the
# zoo's figure, which `make demo` shows), to stay inside 20 minutes (18 min 56 s measured).
demo-train: data
	$(PY) -m experiments.ofas.main --workdir=runs/demo_train --config=$(CONFIG):zoo \
		--config.rl.penalties=$(PENALTY) --zoo_name=ofas_resnet32 --zoo_penalty=$(PENALTY) \
		--zoo_dir=runs/demo_train/zoo $(FLAGS)
	$(PY) -m experiments.ofas.demo --out=runs/demo_train/report --ofas_zoo_dir=runs/demo_train/zoo \
		--pooled_batches=0

# OFAS trained from scratch (stage A on 12,800 images, then stage B at three penalties): what
# the project did before the zoo, ~30 minutes on 2 CPU cores.
demo-scratch: data
	$(PY) -m experiments.ofas.main --workdir=runs/demo_scratch --config=$(CONFIG) $(FLAGS)

# The static ResNet-20 of the scratch demo (the same data and schedule, about 10 minutes).
demo-baseline: data
	$(PY) -m experiments.baseline.main --workdir=runs/demo_baseline --config=$(BASELINE_CONFIG) $(FLAGS)

# The zoo's CPU recipe for ResNet-20 and ResNet-32, one core each, resumable (hours; docs/zoo.md).
ZOO_RUNS ?= runs/zoo
zoo-cpu: data
	for d in 20 32; do \
		taskset -c $$(( d == 20 ? 1 : 0 )) $(PY) -m experiments.zoo.main --workdir=$(ZOO_RUNS)/resnet$$d \
			--config=experiments/zoo/configs/default.py:cpu --config.model.depth=$$d $(FLAGS) & \
	done; wait

# Two workers, each test file in one of them (module fixtures and compiled programs shared within
# a file); TEST_WORKERS=0 runs in this process.
TEST_WORKERS ?= 2
test: install
	$(PY) -m pytest -q --durations=15 -n $(TEST_WORKERS) --dist loadfile

bench: install-bench data
	$(PY) -m benchmarks.resnet_speed $(FLAGS)

clean:
	rm -rf runs .pytest_cache
