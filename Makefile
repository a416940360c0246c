# Batch image classification with Ray Data and PyTorch: see README.md.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
OUTPUT_DIR ?= outputs
PARAMS ?=

.PHONY: install run submit test test-fast bench bench-memory bench-driver lab weights data clean
MODEL ?= resnet152
SIZE ?= 160
IMAGES ?= 100000,1000000

install: $(VENV)/.installed

$(VENV)/.installed: requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps --no-build-isolation --config-settings editable_mode=compat --editable .
	touch $@

run: install  ## execute the four notebooks in order, offline, into $(OUTPUT_DIR)
	$(PY) -m helpers.machinery.series --output-dir $(OUTPUT_DIR) $(PARAMS)

submit: install  ## the series as a Ray job on a running cluster: make submit RAY_ADDRESS=http://HOST:8265 OUTPUT_DIR=...
	$(PY) -m helpers.machinery.series --submit "$(RAY_ADDRESS)" --output-dir $(OUTPUT_DIR) $(PARAMS)

test: install  ## unit tests, then the notebooks end to end (papermill, then nbval); CI and nightly
	$(PY) -m pytest

test-fast: install  ## the same without clusters, long runs, Ray's ports and the benchmark (a few minutes)
	$(PY) -m pytest -m "not slow"

bench: install  ## model only vs a bare PyTorch loop vs the Ray Data pipeline, as a table and JSON
	$(PY) bench/benchmark.py --output $(OUTPUT_DIR)/benchmark.json

bench-memory: install  ## notebook 03's peak memory on 500 and on 5,000 images (about 5 minutes)
	$(PY) bench/memory.py --output $(OUTPUT_DIR)/memory.json

bench-driver: install  ## the driver's seconds and memory per step on synthetic runs: make bench-driver IMAGES=100000,1000000,10000000
	$(PY) bench/driver_scaling.py --images $(IMAGES) --output $(OUTPUT_DIR)/driver_scaling.json

weights: install  ## cache a torchvision model's weights for offline use: make weights MODEL=resnet152
	$(PY) -c "from helpers import models; models.fetch_weights('$(MODEL)')"

data: install  ## Imagenette (SIZE=160|320|full) via torchvision, md5-checked, into data/ for offline workshops
	$(PY) -c "from helpers.machinery import imagenette; print('data_uri:', imagenette.fetch_imagenette('$(SIZE)') / 'val')"

lab: install  ## open the notebooks in JupyterLab
	$(VENV)/bin/jupyter lab notebooks

clean:
	rm -rf $(OUTPUT_DIR) data
