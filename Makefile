# R2MoE for ComfyUI. `make demo` and `make test` set everything up on a fresh machine.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
HOST := .host/ComfyUI
PORT ?= 8188
CKPT ?=
TORCH_PIN := torch==2.14.1 torchvision==0.29.1

.PHONY: env test test-unit test-host test-bench test-e2e lint demo serve bench bench-lifelong bench-lifelong-quick clean

$(VENV)/.installed: requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q $(TORCH_PIN) -r requirements-dev.txt
	touch $@

$(HOST)/.installed: scripts/install_host.py $(VENV)/.installed
	$(PY) scripts/install_host.py --dest .host
	touch $@

env: $(VENV)/.installed $(HOST)/.installed

lint: env
	$(VENV)/bin/ruff check .

test-unit: env
	$(VENV)/bin/pytest -q tests/unit

test-host: env
	$(VENV)/bin/pytest -q tests/host

test-e2e: env
	$(VENV)/bin/pytest -q tests/e2e

# The benchmark world and the benchmark scripts' quick modes (bench/ is never imported by the pack).
test-bench: env
	$(VENV)/bin/pytest -q tests/bench

# Every tier, in order: plain-PyTorch core, in-process ComfyUI, real server over HTTP, benchmark world.
test: lint
	$(VENV)/bin/pytest -q tests/unit tests/host tests/e2e tests/bench

demo: env
	$(PY) scripts/demo.py $(if $(CKPT),--ckpt "$(CKPT)") $(if $(IMAGES),--images "$(IMAGES)") $(if $(STEPS),--steps $(STEPS))

serve: env
	$(PY) scripts/serve.py --host $(HOST) --port $(PORT)

bench: env
	$(PY) bench/sampling.py
	$(PY) bench/training.py

# Lifelong-learning benchmark on the offline world model (README, "Lifelong benchmark"). Default: the committed run
# (every method on seed 0, the four compared methods also on seeds 1 and 2); SEEDS=0,1,2 runs every method on 3 seeds.
bench-lifelong: env
	$(PY) bench/lifelong.py $(if $(SEEDS),--seeds $(SEEDS)) $(if $(CONCEPTS),--concepts "$(CONCEPTS)")

bench-lifelong-quick: env
	$(PY) bench/lifelong.py --quick --out output/lifelong_quick

clean:
	rm -rf .host output .pytest_cache .ruff_cache
