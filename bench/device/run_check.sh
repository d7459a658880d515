#!/usr/bin/env bash
# What a lent device machine runs (`make device-check` there): unpack the carried host and wheels from .device/
# (made here by `make device-pack`), then bench/device_check.py with the image's own python3 and torch.
# Results land in $OUT (the device tool brings them back). WORLD=1 adds the world recipe sweep (SWEEP_ARGS passes
# options to bench/world_sweep.py); CHECK_ARGS passes more options (CHECK_ARGS=--smoke dry-runs this whole path on
# a CPU).
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT="${OUT:-$PWD/output/device_check}"
mkdir -p "$OUT" .host
if [ ! -f .device/MANIFEST.json ]; then
  echo "No .device/ here: run 'make device-pack' on the development machine and carry .device" >&2
  exit 2
fi
[ -f .host/ComfyUI/main.py ] || tar -xzf .device/comfyui.tar.gz -C .host
SITE=/tmp/r2moe_site
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
  .device/wheels/*.whl
export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
python3 -c "import av" 2>/dev/null || export PYTHONPATH="$PYTHONPATH:$PWD/bench/device/av_stub"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/nvidia_smi.csv" || true
PYTHONUNBUFFERED=1 python3 bench/device_check.py --out "$OUT" ${WORLD:+--world} ${BUDGET_S:+--budget-s "$BUDGET_S"} \
  ${CHECK_ARGS:-}
