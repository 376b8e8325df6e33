#!/usr/bin/env bash
# CI check of the vehicle path (README, "Using it in a ROS 2 workspace on a vehicle"): what a vehicle
# team with a ROS 2 install runs, with the project's venv (make setup: ROS 2 Kilted from pip wheels)
# standing in for /opt/ros and colcon from PyPI (pinned: scripts/vehicle-check-requirements.txt).
#
#   1. a workspace in a temporary directory with this checkout as src/ssm_perception
#   2. `colcon build` with colcon's default crawl (no --base-paths, no --packages-select)
#   3. the installed layout `ros2 run` and launch_ros resolve: lib/ssm_perception/<executables>, the
#      ament index, share/ssm_perception/{package.xml,launch,config}, ssm_perception.msg
#   4. the INSTALLED perception_node, started as `ros2 run` starts it (no arguments: it takes the
#      INSTALLED default config), publishes /diagnostics (random ROS_DOMAIN_ID, this host only) and
#      stops cleanly on Ctrl-C
#   5. `colcon test` runs pytest through ament_cmake_pytest; to keep CI short only the packaging tests
#      are selected (PYTEST_ADDOPTS="-k packaging"); `colcon test-result` must count them, 0 failures
#
# Not run here (no network to ros/rosdistro, no ros2cli/launch wheels): `rosdep install` (its keys
# are checked against rosdistro in test/test_packaging.py) and the `ros2` command itself (step 3
# resolves the executable the way `ros2 run` and launch_ros do, through the ament index).
# Usage: scripts/check_vehicle_path.sh [--keep]   (--keep: leave the workspace for inspection)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${VENV:-$ROOT/.venv}
PY=$VENV/bin/python
COLCON_VENV=$ROOT/build/vehicle-check/colcon
KEEP=${1:-}
T0=$(date +%s)
say() { printf '\033[1m[vehicle-check %4ss]\033[0m %s\n' "$(( $(date +%s) - T0 ))" "$*"; }
die() { printf '\033[31m[vehicle-check] FAILED:\033[0m %s\n' "$*" >&2; exit 1; }

[ -x "$PY" ] || die "no project venv at $VENV (run make setup first)"

# ---------------------------------------------------------------- colcon from PyPI (own venv)
REQ=$ROOT/scripts/vehicle-check-requirements.txt
if ! cmp -s "$REQ" "$COLCON_VENV/.requirements" 2>/dev/null; then
  say "installing colcon (pinned) into $COLCON_VENV"
  rm -rf "$COLCON_VENV"; python3 -m venv "$COLCON_VENV"
  mkdir -p "$ROOT/build/vehicle-check"
  "$COLCON_VENV/bin/python" -m pip install -q --disable-pip-version-check -r "$REQ" \
      > "$ROOT/build/vehicle-check/pip.log" 2>&1 \
    || { grep -v "is ignored: it is neither" "$ROOT/build/vehicle-check/pip.log" | tail -20 >&2; die "pip install -r $REQ failed"; }
  cp "$REQ" "$COLCON_VENV/.requirements"
fi

# ---------------------------------------------------------------- the workspace
WS=$(mktemp -d "${TMPDIR:-/tmp}/ssm_vehicle_ws.XXXXXX")
cleanup() { [ "$KEEP" = "--keep" ] && say "workspace kept: $WS" || rm -rf "$WS"; }
trap cleanup EXIT
mkdir -p "$WS/src/ssm_perception"
# the checkout as `git clone` would give it (tracked and new files, nothing ignored: no .venv, build/)
(cd "$ROOT" && git ls-files -z --cached --others --exclude-standard | xargs -0 -I{} sh -c \
  'test -e "{}" && echo "{}"' | tar -cf - -T - | tar -xf - -C "$WS/src/ssm_perception")

# The "ROS 2 install" is the project venv: what `source /opt/ros/<distro>/setup.bash` would set.
export VIRTUAL_ENV=$VENV PATH=$VENV/bin:$PATH AMENT_PREFIX_PATH=$VENV CMAKE_PREFIX_PATH=$VENV
export ROS_DOMAIN_ID=$(( (RANDOM % 100) + 120 )) ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST
export MAKEFLAGS="-j$(nproc)"
colcon() { "$COLCON_VENV/bin/colcon" "$@"; }
cd "$WS"

# ---------------------------------------------------------------- README: colcon build
listing=$(colcon list)
say "colcon list: $listing"
grep -qE '^ssm_perception[[:space:]]+src/ssm_perception[[:space:]]+\(ros\.ament_cmake\)' <<<"$listing" \
  || die "colcon's default crawl does not find ssm_perception as an ament_cmake package"
say "colcon build (rosidl generators + the Python package)"
colcon build > "$WS/build.log" 2>&1 || { tail -40 "$WS/build.log" >&2; die "colcon build failed"; }

# ---------------------------------------------------------------- installed layout
P=$WS/install/ssm_perception
SITE=$P/lib/python3.11/site-packages
for f in lib/ssm_perception/perception_node lib/ssm_perception/perception_lifecycle_node \
         lib/ssm_perception/ssm-perception; do
  [ -x "$P/$f" ] || die "$f is not an installed executable"
done
for f in share/ament_index/resource_index/packages/ssm_perception share/ssm_perception/package.xml \
         share/ssm_perception/launch/ssm_perception.launch.py share/ssm_perception/config/ssm_perception.yaml \
         share/ssm_perception/msg/Track.msg share/ssm_perception/local_setup.bash; do
  [ -f "$P/$f" ] || die "$f is not installed"
done
interp=$(head -1 "$P/lib/ssm_perception/perception_node" | sed 's/^#!//')
[ "$(dirname "$interp")" = "$VENV/bin" ] && "$interp" -c "import rclpy" \
  || die "the executables' interpreter is not the ROS install's Python: $interp"
[ -f "$SITE/ssm_perception/msg/_track.py" ] && [ -f "$SITE/ssm_perception/nodes/perception_node.py" ] \
  || die "the Python package or its generated messages are missing in $SITE"

# README: source install/setup.bash (colcon's setup scripts are not nounset-clean)
set +u
source install/setup.bash
set -u
# What `ros2 run ssm_perception perception_node` does: the package prefix from the ament index, then
# the executable in <prefix>/lib/<package>/ (launch_ros's Node action resolves it the same way).
EXE=$("$PY" - <<'EOF'
import os
from ament_index_python.packages import get_package_prefix, get_package_share_directory
prefix = get_package_prefix("ssm_perception")
exe = os.path.join(prefix, "lib", "ssm_perception", "perception_node")
assert os.access(exe, os.X_OK), exe
print(exe)
# the parameter file the node takes without --params-file (the CPU or GPU default, ssm_perception/defaults.py)
from ssm_perception.nodes.perception_node import default_config_path
config = str(default_config_path())
assert config.startswith(os.path.join(get_package_share_directory("ssm_perception"), "config")), config
print(config)
EOF
) || die "the ament index does not resolve ssm_perception's executable"
CONFIG=$(sed -n 2p <<<"$EXE"); EXE=$(sed -n 1p <<<"$EXE")
[ "$EXE" = "$P/lib/ssm_perception/perception_node" ] || die "ros2 run would start $EXE"
(cd / && "$PY" -c "
import ssm_perception.msg, ssm_perception.nodes.perception_node as n
assert n.__file__.startswith('$SITE'), n.__file__
assert ssm_perception.msg.Track.__module__ and ssm_perception.msg.__file__.startswith('$SITE'), ssm_perception.msg.__file__
") || die "python does not import ssm_perception (and ssm_perception.msg) from the install space"

# ---------------------------------------------------------------- the installed node publishes
say "starting the installed perception_node (default config: ${CONFIG#"$WS/"}; ROS_DOMAIN_ID=$ROS_DOMAIN_ID)"
"$EXE" > "$WS/node.log" 2>&1 &
NODE_PID=$!
"$PY" - <<'EOF' || { kill -INT $NODE_PID 2>/dev/null; tail -30 "$WS/node.log" >&2; die "no /diagnostics from the installed node"; }
import time
import rclpy
from diagnostic_msgs.msg import DiagnosticArray
rclpy.init()
node = rclpy.create_node("vehicle_check_listener")
got = []
node.create_subscription(DiagnosticArray, "/diagnostics", got.append, 10)
deadline = time.monotonic() + 90.0
while time.monotonic() < deadline and not any(s.name.startswith("ssm_perception:") for m in got for s in m.status):
    rclpy.spin_once(node, timeout_sec=0.5)
ok = any(s.name.startswith("ssm_perception:") for m in got for s in m.status)
print(f"[vehicle-check] /diagnostics from the installed node: {'yes' if ok else 'NO'}")
node.destroy_node(); rclpy.shutdown()
raise SystemExit(0 if ok else 1)
EOF
kill -INT $NODE_PID
for _ in $(seq 1 30); do kill -0 $NODE_PID 2>/dev/null || break; sleep 0.5; done
kill -0 $NODE_PID 2>/dev/null && { kill -KILL $NODE_PID; die "the node did not stop on Ctrl-C within 15 s"; }
wait $NODE_PID || die "the node exited with status $? on Ctrl-C: $(tail -5 "$WS/node.log")"
grep -q "shutting down" "$WS/node.log" || die "no clean shutdown line in the node log"

# ---------------------------------------------------------------- README: colcon test
say "colcon test (pytest via ament_cmake_pytest; CI subset: -k packaging)"
export PYTEST_ADDOPTS="-k packaging"
colcon test --packages-select ssm_perception > "$WS/test.log" 2>&1 || true
result=$(colcon test-result --all 2>&1 || true)
echo "$result" | tail -3
summary=$(grep -E '^Summary: ' <<<"$result") || die "colcon test-result found no test results: $(tail -20 "$WS/test.log")"
read -r n_tests n_err n_fail <<<"$(sed -E 's/^Summary: ([0-9]+) tests?, ([0-9]+) errors?, ([0-9]+) failures?.*/\1 \2 \3/' <<<"$summary")"
[ "$n_tests" -gt 0 ] && [ "$n_err" -eq 0 ] && [ "$n_fail" -eq 0 ] \
  || die "colcon test: $summary ($(tail -20 "$WS/test.log"))"
grep -q 'testcase' "$WS/build/ssm_perception/test_results/ssm_perception/pytest.xunit.xml" \
  || die "colcon test did not run pytest"

say "ok: colcon build, installed layout, installed node publishes, colcon test ran $n_tests pytest tests ($(( $(date +%s) - T0 )) s)"
