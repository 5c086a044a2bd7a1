# `make demo`, `make test` and `make validate` build .venv on first use; nothing else needs installing.
# `make test` needs only the repository; `make validate` also needs the project's shared data
# (ABDOSEG_DATA, else ../shared/data beside the checkout), which may not be redistributed.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
BENCH_STAMP := $(VENV)/.installed-bench
TORCH := torch==2.13.0
# Off-screen rendering (the preview's 3D view) goes through EGL with Mesa's software driver.
SYSTEM_PACKAGES := libegl1 libgl1-mesa-dri

.PHONY: demo test validate bench clean

$(STAMP): pyproject.toml
	@dpkg -s $(SYSTEM_PACKAGES) >/dev/null 2>&1 || { \
	  echo "installing $(SYSTEM_PACKAGES) (EGL for off-screen rendering)"; \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq --no-install-recommends $(SYSTEM_PACKAGES); \
	  else sudo apt-get update -qq && sudo apt-get install -y -qq --no-install-recommends $(SYSTEM_PACKAGES); fi; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet $(TORCH)
	echo "$(TORCH)" > $(VENV)/torch-constraint.txt
	$(BIN)/pip install --quiet -c $(VENV)/torch-constraint.txt -e ".[test]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m AbdoSegLib.demo

test: $(STAMP)
	$(BIN)/ruff check
	$(BIN)/python -m pytest -q

validate: $(STAMP)
	$(BIN)/python -m pytest -q Testing/validate

# The bench extra (nnunetv2, for peer_speed.py) under the same torch: unconstrained, pip could replace it with a CUDA build.
$(BENCH_STAMP): $(STAMP)
	$(BIN)/pip install --quiet -c $(VENV)/torch-constraint.txt -e ".[bench]"
	touch $(BENCH_STAMP)

bench: $(BENCH_STAMP)
	$(BIN)/python benchmarks/pipeline_speed.py
	$(BIN)/python benchmarks/compare_speed.py
	$(BIN)/python benchmarks/surface_speed.py
	$(BIN)/python benchmarks/synthetic_speed.py
	$(BIN)/python benchmarks/architecture_speed.py
	$(BIN)/python benchmarks/two_stage_speed.py
	$(BIN)/python benchmarks/cohort_speed.py
	$(BIN)/python benchmarks/peer_speed.py

clean:
	rm -rf $(VENV) build *.egg-info
