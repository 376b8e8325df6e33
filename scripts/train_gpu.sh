#!/usr/bin/env bash
# Train the shipped checkpoint (and the learned baselines) on the GPU machine in one command.
#
# The GPU machine has python3 + torch + numpy/scipy/yaml/safetensors/tqdm/typer but not our venv and
# no internet. The training import path needs, besides those, only pure-Python-or-wheel packages
# that are carried in .whl/ (see below): pydantic, pydantic_core, annotated-types,
# typing-inspection, transforms3d. It never imports rclpy, open3d or rosbags.
#
# Prepare here once (the wheels land in the git-ignored .whl/):
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
#     pydantic==2.14.3 pydantic_core==2.50.4 annotated-types==0.8.0 typing-inspection==0.4.5 transforms3d==0.4.2
# Then, through the device tool (carry [".whl"]; each command must end within 10 minutes):
#   bash scripts/train_gpu.sh --minutes mamba=5.5                     # data + the temporal model
#   bash scripts/train_gpu.sh --minutes convgru=2,attention=2,single=1.5,logodds=0   # baselines, same data
# The simulated data are cached in out/train_cache (git-ignored), so a second command on the same
# warm machine reuses them. Results go to $OUT (or out/gpu): results.tar.gz (per kind: weights
# <kind>.safetensors + sidecar .json, <kind>_metrics.json, <kind>_train_log.jsonl), summary.json
# (held-out validation per kind), train.log. Unpack with scripts/model_card.py --import.
#
# Options: --minutes kind=M[,kind=M...]  training wall-clock per kind (the data warm-up and the
#                                         validation come on top: ~1-2 min for the first kind)
#          --config FILE                  (default config/train_default.yaml)
#          --workers N                    simulator processes (default: CPU cores - 2)
#          --init-from DIR                warm start each kind from DIR/<kind>.safetensors when it exists
#                                         (e.g. ssm_perception/checkpoints: continue the shipped weights)
#          --lr LR                        peak learning rate (default: the config's optim.lr)
#          --train-seeds N                training sequences (default: the config's data.train_seeds.count)
#          --train-seed-start S           first training seed (default: the config's; a continued run
#                                         on new sequences starts past the seeds already used)
#          --min-ready N                  start training once N sequences exist and keep generating the
#                                         rest meanwhile (default: the config's data.min_ready)
# A trainable kind needs minutes > 0 (0 = no wall-clock limit, run.max_steps only); logodds=0 only
# validates the training-free filter on the same held-out sequences.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

MINUTES="mamba=5.5"
CONFIG=config/train_default.yaml
WORKERS=$(( $(nproc) > 3 ? $(nproc) - 2 : 1 ))
INIT_FROM=""
LR=""
TRAIN_SEEDS=""
MIN_READY=""
SEED_START=""
while [ $# -gt 0 ]; do
  case "$1" in
    --minutes) MINUTES=$2; shift 2 ;;
    --config) CONFIG=$2; shift 2 ;;
    --workers) WORKERS=$2; shift 2 ;;
    --init-from) INIT_FROM=$2; shift 2 ;;
    --lr) LR=$2; shift 2 ;;
    --train-seeds) TRAIN_SEEDS=$2; shift 2 ;;
    --min-ready) MIN_READY=$2; shift 2 ;;
    --train-seed-start) SEED_START=$2; shift 2 ;;
    -h|--help) sed -n '2,30p' "$0"; exit 0 ;;
    *) echo "train_gpu.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
RESULTS=${OUT:-out/gpu}
RUNS=out/gpu_runs
mkdir -p "$RESULTS" "$RUNS"
LOG="$RESULTS/train.log"

PY=${PY:-python3}
SITE=/tmp/ssm_site
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
# Install the carried wheels only when something is missing (a machine that has them needs nothing).
if ! $PY -c "import pydantic, transforms3d" 2>/dev/null; then
  if ls .whl/*.whl >/dev/null 2>&1; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/*.whl
    export PYTHONPATH="$PYTHONPATH:$SITE"
  fi
fi
# Keep NVLink multicast off (machine rule), unbuffered logs, sparse progress-bar updates in the log.
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
export PYTHONUNBUFFERED=1 TQDM_MININTERVAL=15 OMP_NUM_THREADS=4

$PY - <<'EOF' 2>&1 | tee -a "$LOG"
import sys
missing = []
for m in ("torch", "numpy", "yaml", "pydantic", "transforms3d", "safetensors", "tqdm", "typer", "zstandard"):
    try:
        __import__(m)
    except ImportError as exc:
        missing.append(f"{m} ({exc})")
if missing:
    sys.exit("missing packages: " + ", ".join(missing) + " -- carry them in .whl/ (see scripts/train_gpu.sh)")
import torch
import ssm_perception.train.trainer  # noqa: F401  (the whole training import path)
assert "rclpy" not in sys.modules and "open3d" not in sys.modules, "training must not import rclpy/open3d"
print(f"python {sys.version.split()[0]}, torch {torch.__version__}, cuda {torch.cuda.is_available()}"
      + (f" ({torch.cuda.get_device_name(0)})" if torch.cuda.is_available() else ""))
EOF

IFS=',' read -r -a ITEMS <<< "$MINUTES"
for item in "${ITEMS[@]}"; do
  kind=${item%%=*}
  mins=${item#*=}
  echo "=== $kind: training for $mins min (config $CONFIG, $WORKERS simulator processes) ===" | tee -a "$LOG"
  start=$(date +%s)
  extra=()
  if [ -n "$INIT_FROM" ] && [ -f "$INIT_FROM/$kind.safetensors" ]; then
    extra+=(--init-weights "$INIT_FROM/$kind.safetensors")
    echo "    warm start from $INIT_FROM/$kind.safetensors" | tee -a "$LOG"
  elif [ -n "$INIT_FROM" ] && [ "$kind" != logodds ]; then
    echo "    WARNING: no $INIT_FROM/$kind.safetensors: $kind starts from random weights" | tee -a "$LOG"
  fi
  [ -n "$LR" ] && extra+=(--lr "$LR")
  [ -n "$TRAIN_SEEDS" ] && extra+=(--train-seeds "$TRAIN_SEEDS")
  [ -n "$MIN_READY" ] && extra+=(--min-ready "$MIN_READY")
  [ -n "$SEED_START" ] && extra+=(--train-seed-start "$SEED_START")
  $PY -m ssm_perception.train.cli --config "$CONFIG" --out "$RUNS/$kind" --kind "$kind" \
      --max-minutes "$mins" --workers "$WORKERS" "${extra[@]}" 2>&1 | tee -a "$LOG"
  echo "=== $kind: done in $(( $(date +%s) - start )) s ===" | tee -a "$LOG"
  for f in model.safetensors model.safetensors.json; do
    [ -f "$RUNS/$kind/$f" ] && cp "$RUNS/$kind/$f" "$RUNS/${f/model/$kind}"
  done
  cp "$RUNS/$kind/metrics.json" "$RUNS/${kind}_metrics.json"
  [ -f "$RUNS/$kind/train_log.jsonl" ] && cp "$RUNS/$kind/train_log.jsonl" "$RUNS/${kind}_train_log.jsonl"
done

# One archive of every kind trained so far on this machine (earlier commands included).
shopt -s nullglob
files=("$RUNS"/*.safetensors "$RUNS"/*.safetensors.json "$RUNS"/*_metrics.json "$RUNS"/*_train_log.jsonl)
tar czf "$RESULTS/results.tar.gz" -C "$RUNS" "${files[@]##*/}"
$PY - "$RUNS" "$RESULTS/summary.json" <<'EOF' | tee -a "$LOG"
import json, pathlib, sys
runs, out = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
summary = {}
for f in sorted(runs.glob("*_metrics.json")):
    m = json.loads(f.read_text())
    s, v = m["val"]["splits"], m["val"]
    summary[f.name[: -len("_metrics.json")]] = {
        "steps": m["meta"]["steps"], "train_time_s": m["meta"]["train_time_s"], "ece": v["ece"],
        **{f"iou_{k}": s[k]["iou"] for k in ("all", "static", "dynamic", "occluded", "dynamic_occluded")},
    }
out.write_text(json.dumps(summary, indent=2))
print(json.dumps(summary, indent=2))
EOF
ls -la "$RESULTS"
