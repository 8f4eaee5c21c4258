#!/usr/bin/env bash
# One prepared leg for a lent GPU machine (it reaches no package index): install the carried
# wheels, name the card, then, each bounded in time and each writing under $OUT:
#   1. speed: benchmarks/model_speed.py on the base preset in bf16 (training-step MFU against the
#      card's measured bf16 matmul peak; greedy and beam-3 generation vs transformers' T5 of the same dims)
#   1b. serve: benchmarks/serve_load.py, one round of its arms, the server on the card
#   2. train: a training leg: RECIPE (default: the shapes-multi-image study) from its recipe's init for
#      STEPS steps, exported; the export (~17 MiB in fp32) comes back in 15 MiB parts:
#      cat leg-export.tar.part-* | tar -xf -   gives unio-leg-export/
#   3. eval: unio eval of that export on EVAL_DATA (report seed) for EVAL_TASKS
# PARTS picks them (default "speed serve", about 7 minutes; "train eval" about 9): one device call
# runs at most 10 minutes, so a session that wants both makes two calls.
# Prepare here:  bash benchmarks/gpu_wheels.sh
# Run there (the device tool): command "bash benchmarks/gpu_leg.sh", carry [".whl"], timeout 600;
# env before the command overrides: PARTS="..." RECIPE=... STEPS=... EVAL_DATA=... EVAL_TASKS="..." EVAL_N=...;
# NO_WHEELS=1 uses the packages already there (a check on a CPU machine: the steps run,
# slowly, without the card).
set -uo pipefail
OUT=${OUT:-/tmp/unio-gpu-out}
mkdir -p "$OUT"
LOG="$OUT/leg.log"
exec > >(tee -a "$LOG") 2>&1
RECIPE=${RECIPE:-recipes/shapes-multi-image.yaml}
STEPS=${STEPS:-1600}
EVAL_DATA=${EVAL_DATA:-shapes-clips:61}
EVAL_TASKS=${EVAL_TASKS:-video_classify video_caption}
EVAL_N=${EVAL_N:-500}
PARTS=${PARTS:-speed serve}
has() { case " $PARTS " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }
export PYTHONUNBUFFERED=1 PYTHONPATH="/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
echo "== $(date -u +%FT%TZ) gpu_leg: recipe $RECIPE, $STEPS steps; eval $EVAL_DATA: $EVAL_TASKS"
if [ -d .whl ] && [ -z "${NO_WHEELS:-}" ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "wheel install failed"; exit 3; }
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/device.txt"
python3 - <<'PY' || { echo "unio does not import here; see the error above"; exit 4; }
import torch, transformers, deepspeed, vector_quantize_pytorch, unio
print("torch", torch.__version__, "cuda", torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
print("transformers", transformers.__version__, "deepspeed", deepspeed.__version__, "unio", unio.__version__)
PY
if has speed; then
  echo "== model_speed (base, bf16)"
  timeout 200 python3 benchmarks/model_speed.py --presets base --repeats 3 --out "$OUT/model_speed_gpu.json" \
    || echo "model_speed ended with $?"
fi
if has serve; then
  echo "== serve_load (the server on the card)"
  timeout 200 python3 benchmarks/serve_load.py --rounds 1 --time-limit 180 --out "$OUT/serve_load_gpu.json" \
    || echo "serve_load ended with $?"
fi
if has train; then
  echo "== training leg"
  RUN=/tmp/unio-leg-run
  timeout 360 python3 -m unio train "$RECIPE" --set "out=$RUN" --set "train.steps=$STEPS" --set train.save_every=200 \
    || echo "training ended with $? (the last checkpoint is exported)"
  if python3 -m unio export "$RUN" /tmp/unio-leg-export; then
    tar -C /tmp -cf - unio-leg-export | split -b 15M - "$OUT/leg-export.tar.part-"  # files come back <= 16 MiB
  fi
fi
if has eval && [ -d /tmp/unio-leg-export ]; then
  echo "== eval"
  # shellcheck disable=SC2086
  timeout 150 python3 -m unio eval --model /tmp/unio-leg-export --data "$EVAL_DATA" --n "$EVAL_N" --tasks $EVAL_TASKS \
    --out "$OUT/leg-eval.json" || echo "eval ended with $?"
fi
ls -la "$OUT"
