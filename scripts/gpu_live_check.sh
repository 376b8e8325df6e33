#!/usr/bin/env bash
# The node live over DDS on the GPU machine (no ROS 2 installed there, no internet): drops, self
# resets and latency on a simulated 10 Hz drive replayed in real time (scripts/gpu_live_check.py).
#
#   bash scripts/gpu_live_check.sh [gpu_live_check.py options, e.g. --duration 20 --seed 200000]
#
# Needs, carried in the working tree (git-ignored; build them here first):
#   .gpu_ros/   bash scripts/build_gpu_ros_bundle.sh  (ROS 2 Kilted runtime + our messages, cp312)
#   .whl/       pydantic, transforms3d, rosbags, ... (README, "GPU": the wheels the image lacks)
# Through the device tool: carry [".gpu_ros", ".whl"]; it writes results/gpu_live_check_<gpu>.json
# (h200, h100, ...; RESULT=path to change) and copies it, with this script's log and the node's and
# the replay's logs, into $OUT when that is set. Bag and logs are simulated into /tmp/ssm_live_check.
# Environment: PYTHON (default python3: the GPU image's Python 3.12 with CUDA torch), RESULT,
# CONFIG (default config/ssm_perception_gpu.yaml; config/ssm_perception_cpu.yaml for a CPU trial).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD

PY=${PYTHON:-python3}
# results/gpu_live_check_<gpu>.json: h200, h100, ... from nvidia-smi; "cpu" without a GPU
GPU_NAME=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1 || true)
TAG=$(printf '%s' "$GPU_NAME" | grep -oiE '[A-Z][0-9]{2,4}' | head -1 | tr 'A-Z' 'a-z' || true)
RESULT=${RESULT:-results/gpu_live_check_${TAG:-cpu}.json}
WORK=${GPU_LIVE_WORK:-/tmp/ssm_live_check}
CONFIG=${CONFIG:-config/ssm_perception_gpu.yaml}
BUNDLE=${GPU_ROS_BUNDLE:-$ROOT/.gpu_ros/ros_kilted_cp312.tar.xz}
PREFIX=${GPU_ROS_PREFIX:-/tmp/ssm_gpu_ros}
SITE=${GPU_SITE:-/tmp/ssm_site}
LOG=$(mktemp /tmp/gpu_live_check.XXXXXX.log)
START=$(mktemp /tmp/gpu_live_check.XXXXXX.start)  # only files newer than this go to $OUT (no stale results)
rm -rf "$WORK"

say() { printf '\033[1m[gpu-live]\033[0m %s\n' "$*" | tee -a "$LOG"; }
copy_out() {
  if [ -n "${OUT:-}" ]; then
    mkdir -p "$OUT"
    if [ "$RESULT" -nt "$START" ] && [ "$(realpath "$(dirname "$RESULT")")" != "$(realpath "$OUT")" ]; then
      cp "$RESULT" "$OUT/"
    fi
    for f in "$WORK"/node.log "$WORK"/replay.log; do
      if [ "$f" -nt "$START" ]; then cp "$f" "$OUT/gpu_live_check_$(basename "$f")"; fi
    done
    cp "$LOG" "$OUT/gpu_live_check.log" || true
  fi
}
die() {
  printf '\033[31m[gpu-live] error:\033[0m %s\n' "$*" | tee -a "$LOG" >&2
  copy_out
  exit 2
}
trap 'copy_out' EXIT

# ------------------------------------------------------------------ 1. what must be here
command -v "$PY" >/dev/null || die "no '$PY' (set PYTHON to the Python 3.12 that has torch)"
"$PY" -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 12) else 1)' \
  || die "$PY is Python $("$PY" -c 'import platform; print(platform.python_version())'); the bundle is for 3.12 (cp312)"
[ -f "$BUNDLE" ] || die "missing $BUNDLE: run 'bash scripts/build_gpu_ros_bundle.sh' here and carry .gpu_ros"
if [ -f "$(dirname "$BUNDLE")/MANIFEST.json" ]; then
  want=$("$PY" -c 'import json,sys; print(json.load(open(sys.argv[1]))["sha256"])' "$(dirname "$BUNDLE")/MANIFEST.json")
  have=$(sha256sum "$BUNDLE" | cut -d' ' -f1)
  [ "$want" = "$have" ] || die "$BUNDLE does not match its MANIFEST.json (sha256 $have, expected $want): carried incompletely?"
  "$PY" - "$(dirname "$BUNDLE")/MANIFEST.json" "$ROOT" <<'EOF' || die "the bundle's messages differ from msg/ here: rebuild it (bash scripts/build_gpu_ros_bundle.sh)"
import hashlib, json, sys
from pathlib import Path
want = json.load(open(sys.argv[1])).get("msg_sources_sha256")
root = Path(sys.argv[2])
sources = sorted([*root.glob("msg/*.msg"), *root.glob("interfaces/tf2_msgs/msg/*.msg")])
sys.exit(0 if want == hashlib.sha256(b"".join(p.name.encode() + p.read_bytes() for p in sources)).hexdigest() else 1)
EOF
fi

# ------------------------------------------------------------------ 2. unpack the ROS bundle, install the wheels
t0=$(date +%s)
rm -rf "$PREFIX"; mkdir -p "$PREFIX"
"$PY" - "$BUNDLE" "$PREFIX" <<'EOF' || die "could not unpack $BUNDLE"
import sys, tarfile
with tarfile.open(sys.argv[1], "r:xz") as tar:
    tar.extractall(sys.argv[2], filter="tar")  # relative symlinks between identical libraries
EOF
if ls .whl/*.whl >/dev/null 2>&1; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/*.whl \
    >> "$LOG" 2>&1 || die "pip could not install the carried wheels from .whl/ (log: $LOG)"
fi
say "ROS 2 bundle unpacked to $PREFIX, wheels in $SITE ($(( $(date +%s) - t0 )) s)"

# ------------------------------------------------------------------ 3. the environment a ROS install would set
libs=$PREFIX/lib
for d in "$PREFIX"/site/ros_*.libs; do libs=$libs:$d; done
export LD_LIBRARY_PATH=$libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
export PYTHONPATH=$ROOT:$PREFIX/site:$SITE${PYTHONPATH:+:$PYTHONPATH}
export AMENT_PREFIX_PATH=$PREFIX
export RMW_IMPLEMENTATION=rmw_fastrtps_cpp
export ROS_DOMAIN_ID=${ROS_DOMAIN_ID:-$(( 120 + RANDOM % 100 ))}
export PYTHONUNBUFFERED=1
export ROS_LOG_DIR=${ROS_LOG_DIR:-/tmp/ssm_ros_log}  # rcl's log files: not in a HOME that may be read-only
unset ROS_AUTOMATIC_DISCOVERY_RANGE ROS_LOCALHOST_ONLY || true
# Keep NVLink multicast off (machine rule).
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1

"$PY" - <<'EOF' 2>&1 | tee -a "$LOG" || die "the environment is incomplete (above)"
import sys
try:
    import rclpy, torch
    from nav_msgs.msg import OccupancyGrid  # noqa: F401
    from ssm_perception.msg import TrackArray  # noqa: F401
    from tf2_msgs.msg import TFMessage  # noqa: F401
    import ssm_perception.nodes.perception_node  # noqa: F401
except Exception as exc:  # noqa: BLE001
    sys.exit(f"import failed: {type(exc).__name__}: {exc}")
rclpy.init()
rclpy.try_shutdown()
print(f"[gpu-live] python {sys.version.split()[0]}, torch {torch.__version__}, cuda "
      f"{torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'none'}, rclpy + Fast DDS + messages import")
EOF

# ------------------------------------------------------------------ 4. the check
say "node config $CONFIG, ROS_DOMAIN_ID=$ROS_DOMAIN_ID -> $RESULT"
set +e
"$PY" scripts/gpu_live_check.py --config "$CONFIG" -o "$RESULT" --work "$WORK" "$@" 2>&1 | tee -a "$LOG"
rc=${PIPESTATUS[0]}
set -e
say "exit code $rc (0 target met, 1 measured but missed, 2 could not measure); total $(( $(date +%s) - t0 )) s"
exit "$rc"
