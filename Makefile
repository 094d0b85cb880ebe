# Two commands do all set-up on a fresh machine (see README):
#   make demo       — install, then run the main job on the bundled sample video
#   make test       — install with the test extras, then lint and run the whole test suite
# and, for development:
#   make test-fast  — the tests not marked `slow` (under a minute), no lint
#   make lock       — re-resolve requirements/constraints.txt after changing pyproject's dependencies
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU build of torch (a local file on our machines; an unpinned torch pulls a CUDA build).
TORCH ?= torch==2.13.0
# Every pip call installs through the lock, so a new release upstream cannot break a fresh install.
LOCK := requirements/constraints.txt
PIP := $(BIN)/pip install --quiet --constraint $(LOCK)
# lmms-eval goes in without its dependencies (they pull torchvision + a CUDA torch and pin av<16);
# the `eval` extra is the subset its evaluator and command line import.
LMMS_EVAL ?= lmms-eval==0.7.3
# `make lock`: the resolver, and where it finds the CPU torch wheel that requirements/lock.in names
# (elsewhere: TORCH_WHEELS="--extra-index-url https://download.pytorch.org/whl/cpu").
UV ?= uv==0.13.9
TORCH_WHEELS ?= --find-links /opt/wheels
# One of the sample's questions (src/cope/assets/sample.json); tests/commands/test_bundled_model.py
# checks that the bundled model answers it correctly.
DEMO_QUESTION ?= Late in the clip, which way is the blue star going?

.PHONY: demo test test-fast lint lock install install-test pre-commit browser tiny-model tiny-table clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml $(LOCK) | $(BIN)/python
	$(PIP) $(TORCH)
	$(PIP) -e ".[train,serve]"
	touch $@

$(VENV)/.installed-test: pyproject.toml $(LOCK) | $(BIN)/python
	$(PIP) $(TORCH)
	$(PIP) -e ".[train,serve,ray,test]"
	$(PIP) --no-deps $(LMMS_EVAL)
	$(PIP) -e ".[eval]"
	touch $@ $(VENV)/.installed

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test

# Resolve every extra (plus the CPU torch of requirements/lock.in) for Python 3.11 on Linux, then
# add lmms-eval, which is installed without its dependencies. Run it after changing any dependency
# in pyproject.toml, run `make test` on a fresh .venv, and commit the new lock with the change.
lock: | $(BIN)/python
	$(BIN)/pip install --quiet $(UV)
	$(BIN)/uv pip compile pyproject.toml requirements/lock.in --all-extras $(TORCH_WHEELS) \
		--python-version 3.11 --python-platform x86_64-unknown-linux-gnu --no-annotate --quiet \
		--custom-compile-command "make lock" --output-file $(LOCK)
	printf '%s\n' "$(LMMS_EVAL)" >> $(LOCK)  # installed with --no-deps

# Optional: run the Makefile's ruff check and format on every `git commit`.
pre-commit: $(VENV)/.installed-test
	$(PIP) -e ".[dev]"
	$(BIN)/pre-commit install

# Debian's Chromium + ChromeDriver for the browser test of the web page (skipped where absent).
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
		(apt-get install -y -q chromium chromium-driver >/dev/null 2>&1 || \
		 (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q chromium chromium-driver >/dev/null 2>&1) || \
		 echo "make: could not install chromium; the browser test will be skipped")

demo: $(VENV)/.installed
	$(BIN)/cope inspect src/cope/assets/sample.mp4 --plot cope-inspect.png
	$(BIN)/cope ask src/cope/assets/sample.mp4 "$(DEMO_QUESTION)"

# Retrain the bundled CoPE-Tiny from nothing (MotionQA data, tower, stage 0, stage 2; about 2 h 10 min
# on 2 CPU cores) and replace src/cope/assets/cope-tiny.
tiny-model: $(VENV)/.installed
	$(BIN)/python scripts/train_tiny.py --export --overwrite

# The MotionQA results table (README): also trains the paper's recipe, stage 2 from the stage-1
# Δ-encoder (paper H.2), the paper's free-query Δ-encoder, and the equal-steps dense baseline.
tiny-table: tiny-model
	$(BIN)/python scripts/train_tiny.py --ablation
	$(BIN)/python benchmarks/motionqa_table.py --base build/tiny/stage0/final \
		--cope build/tiny/stage2/final --dense build/tiny/stage2-dense/final \
		--with-stage1 build/tiny/stage2-with-stage1/final \
		--free-queries build/tiny/stage2-free-queries/final --out docs/motionqa-table

lint: $(VENV)/.installed-test
	$(BIN)/ruff check src tests benchmarks scripts
	$(BIN)/ruff format --check src tests benchmarks scripts
	$(BIN)/mypy  # the modules listed under [tool.mypy] in pyproject.toml

test: lint browser
	$(BIN)/python -m pytest

test-fast: $(VENV)/.installed-test
	$(BIN)/python -m pytest -m "not slow"

clean:
	rm -rf $(VENV) cope-inspect.png .pytest_cache
