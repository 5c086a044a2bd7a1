# `make demo`, `make test` and `make validate` build .venv on first use; nothing else needs installing.
# `make test` needs only the repository; `make validate` also needs the project's shared data
# (ABDOSEG_DATA, else ../shared/data beside the checkout), which may not be redistributed.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
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
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e ".[test]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m AbdoSegLib.demo

test: $(STAMP)
	$(BIN)/ruff check
	$(BIN)/python -m pytest -q

validate: $(STAMP)
	$(BIN)/python -m pytest -q Testing/validate

bench: $(STAMP)
	$(BIN)/python benchmarks/pipeline_speed.py
	$(BIN)/python benchmarks/compare_speed.py
	$(BIN)/python benchmarks/surface_speed.py
	$(BIN)/python benchmarks/synthetic_speed.py
	$(BIN)/python benchmarks/architecture_speed.py

clean:
	rm -rf $(VENV) build *.egg-info
