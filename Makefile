# R2MoE for ComfyUI. `make demo` and `make test` set everything up on a fresh machine.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
HOST := .host/ComfyUI
COMFYUI ?= $(HOST)
PORT ?= 8188
CKPT ?=
TORCH_PIN := torch==2.14.1 torchvision==0.29.1
# The newest ComfyUI frontend the pinned host serves (--front-end-root): the browser tier runs against it too.
NEW_FRONTEND := 1.58.1
NEW_FRONTEND_ROOT := .host/frontend-$(NEW_FRONTEND)/static

.PHONY: env browser-env device-pack device-check test test-unit test-host test-bench test-e2e test-faults test-browser lint templates demo serve bench bench-lifelong bench-lifelong-quick bench-status bench-hlag bench-multiconcept bench-learning bench-metric clean

$(VENV)/.installed: requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q $(TORCH_PIN) -r requirements-dev.txt
	touch $@

$(HOST)/.installed: scripts/install_host.py $(VENV)/.installed
	$(PY) scripts/install_host.py --dest .host
	touch $@

env: $(VENV)/.installed $(HOST)/.installed

# Browser tier: Debian's chromium (never a browser download) driven by playwright-core from npm.
node_modules/.installed: package.json package-lock.json
	command -v chromium >/dev/null || (apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium)
	PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund
	touch $@

$(NEW_FRONTEND_ROOT)/index.html: scripts/install_frontend.py $(VENV)/.installed
	$(PY) scripts/install_frontend.py --version $(NEW_FRONTEND) --dest .host/frontend-$(NEW_FRONTEND)

browser-env: env node_modules/.installed $(NEW_FRONTEND_ROOT)/index.html

lint: env
	$(VENV)/bin/ruff check .

test-unit: env
	$(VENV)/bin/pytest -q tests/unit

test-host: env
	$(VENV)/bin/pytest -q tests/host

test-e2e: env
	$(VENV)/bin/pytest -q tests/e2e

# Faults and abuse: kill -9 during saves, two processes saving one bank, hostile LLM servers, oversized input,
# failed and cancelled training, a load run; a real server and loopback sockets only.
test-faults: env
	$(VENV)/bin/pytest -q tests/faults

# The benchmark world and the benchmark scripts' quick modes (bench/ is never imported by the pack).
test-bench: env
	$(VENV)/bin/pytest -q tests/bench

# The real frontend in Chromium: the pinned one, then the newest one with its "Nodes 2.0" rendering on.
test-browser: browser-env
	node --test --test-concurrency=1 tests/browser/
	R2MOE_FRONTEND_ROOT=$(CURDIR)/$(NEW_FRONTEND_ROOT) R2MOE_VUE_NODES=1 node --test --test-concurrency=1 tests/browser/

# Every tier, in order: plain-PyTorch core, in-process ComfyUI, real server over HTTP, benchmark world, browser.
test: lint browser-env
	$(VENV)/bin/pytest -q tests/unit tests/host tests/e2e tests/faults tests/bench
	$(MAKE) --no-print-directory test-browser

# Rebuild example_workflows/ (UI-format templates and their thumbnails from a real run on the tiny model).
templates: browser-env
	node scripts/browser/make_templates.mjs

demo: env
	$(PY) scripts/demo.py $(if $(CKPT),--ckpt "$(CKPT)") $(if $(IMAGES),--images "$(IMAGES)") $(if $(STEPS),--steps $(STEPS))

serve: env
	$(PY) scripts/serve.py --host $(COMFYUI) --port $(PORT)

bench: env
	$(PY) bench/sampling.py
	$(PY) bench/training.py
	$(PY) bench/family_cost.py

# Lifelong-learning benchmark on the offline world model (README, "Lifelong benchmark"). Default: the committed run
# (every method on seed 0, the four compared methods also on seeds 1 and 2); SEEDS=0,1,2 runs every method on 3 seeds.
bench-lifelong: env
	$(PY) bench/lifelong.py $(if $(SEEDS),--seeds $(SEEDS)) $(if $(CONCEPTS),--concepts "$(CONCEPTS)")

bench-lifelong-quick: env
	$(PY) bench/lifelong.py --quick --out output/lifelong_quick

# Multi-concept track on 3 training seeds (about 30 min each on 2 cores), merged with its spread into
# bench/results/multiconcept.{json,md}; the runs stay in output/multiconcept/SEED.
bench-multiconcept: env
	for seed in 0 1 2; do $(PY) bench/multiconcept.py --seed $$seed --out output/multiconcept/$$seed || exit 1; done
	$(PY) bench/multiconcept_seeds.py output/multiconcept/0 output/multiconcept/1 output/multiconcept/2 --out bench/results

# Training settings one change at a time on development concepts, held-out IA beside the token alone
# (bench/results/learning_sweep.{json,md}); the sampling-strength variants, added later, were run apart
# (bench/results/learning_sweep_strength.{json,md}).
bench-learning: env
	$(PY) bench/learning_sweep.py --seeds 0,1

# What image alignment sees: true renders with one concept attribute changed (bench/results/metric_sensitivity.*).
bench-metric: env
	$(PY) bench/metric_sensitivity.py

# HLAG settings one change at a time on the multi-concept track (bench/results/hlag_sweep.{json,md}).
bench-hlag: env
	$(PY) bench/hlag_sweep.py

# Which results in bench/results are older than the code they measure (each JSON records its code's digests).
bench-status: env
	$(PY) bench/status.py

# One lent NVIDIA GPU: half-precision correctness, sampling and training speed and peak VRAM (README, "On a GPU").
# Here: `make device-pack` builds .device/ (pinned host + wheels the device lacks); the device call runs
# `make device-check` with carry [".device"], results in $$OUT. SMOKE=1: the same code on the tiny models on a CPU.
device-pack: env
	$(PY) scripts/device_pack.py

device-check: $(if $(SMOKE),env)
ifdef SMOKE
	$(PY) bench/device_check.py --smoke --out output/device_check_smoke $(if $(WORLD),--world)
else
	bash bench/device/run_check.sh
endif

clean:
	rm -rf .host .device output .pytest_cache .ruff_cache node_modules
