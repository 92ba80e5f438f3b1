#!/usr/bin/env bash
# Self-distillation pretraining of ptv3_micro on one GPU for a fixed time budget.
#
# Made for a GPU that is lent for a few minutes, on a machine where the package cannot be
# installed (no network): it runs detfm from this checkout (PYTHONPATH=src) with the python
# that holds torch there. Steps:
#   1. simulate EVENTS unlabeled events with all cores (skipped if DATA exists);
#   2. a short calibration run (CALIBRATE_STEPS steps) measures the time per step;
#   3. the real run gets --steps sized to fill MINUTES (schedules and learning rate end at
#      the last step), with --time-limit MINUTES as a safety stop;
#   4. the run's small files come back flat under OUT/distill_gpu/ (weights, config,
#      metrics, manifest, log; no checkpoints), ready for `detfm probe/finetune --backbone`.
#
# Usage:  OUT=/path/to/results bash scripts/gpu_pretrain.sh
# Knobs (environment): MINUTES (10), EVENTS (20000), DATA (/tmp/detfm_unlabeled_$EVENTS.h5),
# WORKERS (all cores), BATCH (config's 32), CALIBRATE_STEPS (40), PYTHON (python3),
# CONFIG (configs/pretrain_distill_gpu.yaml).
set -euo pipefail
cd "$(dirname "$0")/.."

: "${OUT:?set OUT to the folder that receives the run}"
MINUTES=${MINUTES:-10}
EVENTS=${EVENTS:-20000}
DATA=${DATA:-/tmp/detfm_unlabeled_${EVENTS}.h5}
WORKERS=${WORKERS:-$(nproc)}
CALIBRATE_STEPS=${CALIBRATE_STEPS:-40}
PYTHON=${PYTHON:-python3}
CONFIG=${CONFIG:-configs/pretrain_distill_gpu.yaml}
BATCH_FLAG=()
if [[ -n "${BATCH:-}" ]]; then BATCH_FLAG=(--batch-size "$BATCH"); fi

export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
detfm() { "$PYTHON" -m detfm.cli "$@"; }
work=$(mktemp -d /tmp/detfm_gpu.XXXXXX)
run="$work/distill_gpu"
dest="$OUT/distill_gpu"
mkdir -p "$dest"
log="$dest/pretrain.log"

"$PYTHON" - <<'EOF' | tee "$dest/device.txt"
import torch
print("torch", torch.__version__, "cuda", torch.cuda.is_available(),
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu")
EOF

# 1. data
if [[ ! -f "$DATA" ]]; then
    detfm simulate --events "$EVENTS" --seed 2000 --workers "$WORKERS" --out "$DATA" --quiet
fi

# 2. time per step (the calibration includes start-up, so it errs on the slow side)
detfm pretrain --config "$CONFIG" --data "$DATA" --steps "$CALIBRATE_STEPS" "${BATCH_FLAG[@]}" \
    --out "$work/calibrate" > "$work/calibrate.log" 2>&1 || { cat "$work/calibrate.log"; exit 1; }
steps=$("$PYTHON" - "$work/calibrate/metrics.jsonl" "$MINUTES" <<'EOF'
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
per_step = rows[-1]["time_s"] / rows[-1]["step"]
print(max(1, int(0.95 * 60 * float(sys.argv[2]) / per_step)))
print(f"calibration: {per_step:.3f} s/step", file=sys.stderr)
EOF
)
echo "pretraining for $steps steps (budget $MINUTES min)" | tee "$log"

# 3. the run
detfm pretrain --config "$CONFIG" --data "$DATA" --steps "$steps" "${BATCH_FLAG[@]}" \
    --time-limit "$MINUTES" --out "$run" 2>&1 | tr '\r' '\n' | grep -v '^train: ' >> "$log" || true

# 4. bring back the small files, flat
for f in model.safetensors backbone.yaml config.yaml metrics.jsonl manifest.json; do
    if [[ -f "$run/$f" ]]; then cp "$run/$f" "$dest/"; fi
done
tail -n 3 "$log"
if [[ ! -f "$dest/model.safetensors" ]]; then echo "no weights were written; see $log" >&2; exit 1; fi
