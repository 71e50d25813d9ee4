# The two commands a newcomer needs: `make run` and `make test` (both create .venv if missing).
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.install-stamp
ENV ?= base
PYTEST_ARGS ?=
SEEDS ?= 42 43 44

# Offline and no telemetry, for every target.
export DO_NOT_TRACK := 1
export KEDRO_DISABLE_TELEMETRY := true
export DVC_NO_ANALYTICS := 1
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
# torch's OpenMP threads spin-wait by default; with anything else running that is ~12x slower (stack.md G10).
export OMP_WAIT_POLICY := PASSIVE

.PHONY: install run test seeds lint format viz clean-data

$(PY):
	$(PYTHON) -m venv $(VENV)

# Reinstalls only when the pinned dependencies change (the stamp is newer than both files).
$(STAMP): pyproject.toml requirements.lock | $(PY)
	$(PY) -m pip install -q --disable-pip-version-check torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q --disable-pip-version-check -c requirements.lock -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# The default env goes through DVC, so a second `make run` with nothing changed reuses every
# cached stage (dvc.yaml: one stage per pipeline part and round); other envs, or a copy without
# git/DVC metadata, run the pipelines with Kedro directly.
run: install
	@if [ "$(ENV)" = base ] && $(VENV)/bin/dvc root >/dev/null 2>&1; then \
		echo "dvc repro (the default run; stages already up to date are reused)"; \
		PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(VENV)/bin/dvc repro; \
	else \
		$(VENV)/bin/kedro run --env $(ENV); \
	fi

test: install
	$(PY) -m pytest $(PYTEST_ARGS)

# The default pipeline once per seed, each into <data_root>/seeds/seed_N/, then mean, std, min
# and max of the key metrics in <data_root>/08_reporting/seeds/summary.{csv,md} (README "Seeds").
seeds: install
	$(PY) -m aot.evaluation.seeds run --env $(ENV) --seeds $(SEEDS)

lint: install
	$(VENV)/bin/ruff check src tests benchmarks notebooks
	$(VENV)/bin/ruff format --check src tests benchmarks notebooks

format: install
	$(VENV)/bin/ruff check --fix src tests benchmarks notebooks
	$(VENV)/bin/ruff format src tests benchmarks notebooks

viz: install
	$(VENV)/bin/kedro viz run --env $(ENV)

# Back to a fresh clone's data/: everything the runs wrote goes, what git holds (the pretrained
# tiny Defender, the committed metrics and plots) comes back.
clean-data:
	find data -mindepth 2 ! -name .gitkeep -delete 2>/dev/null || true
	git checkout -- data 2>/dev/null || true
