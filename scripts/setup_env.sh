#!/usr/bin/env bash
# `make setup`: a virtual environment with pinned dependencies, ROS 2 Kilted from pip wheels, our
# interface messages built with rosidl, and this package installed in development mode.
#
# Idempotent: every step records a fingerprint of its inputs in .venv/.setup-stamps/ and is skipped
# when nothing changed, so a second run takes a few seconds.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${VENV:-$ROOT/.venv}
PY=$VENV/bin/python
STAMPS=$VENV/.setup-stamps
BUILD=$ROOT/build/msgs
JOBS=${JOBS:-$(nproc)}

say() { printf '\033[1m[setup]\033[0m %s\n' "$*"; }
die() { printf '\033[31m[setup] error:\033[0m %s\n' "$*" >&2; exit 1; }
fingerprint() { cat "$@" 2>/dev/null | sha256sum | cut -c1-16; }
step_done() { [ -f "$STAMPS/$1" ] && [ "$(cat "$STAMPS/$1")" = "$2" ]; }
mark_done() { mkdir -p "$STAMPS"; echo "$2" > "$STAMPS/$1"; }

# ------------------------------------------------------------------ 0. host tools and libraries
for tool in python3 cmake make cc c++; do
  command -v "$tool" >/dev/null || die "missing host tool '$tool' (Debian: apt-get install -y python3-venv python3-dev cmake build-essential)"
done
python3 -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else 1)' \
  || die "Python 3.11 is required (the ROS 2 Kilted wheels and the lock file are for cp311); found $(python3 --version)"
# open3d needs libusb-1.0 at import time even on the CPU build.
if ! ldconfig -p | grep -q 'libusb-1.0.so.0'; then
  say "installing the Debian package libusb-1.0-0 (needed by open3d)"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  { $SUDO apt-get install -y -q libusb-1.0-0 >/dev/null 2>&1 \
      || { $SUDO apt-get update -q >/dev/null 2>&1 && $SUDO apt-get install -y -q libusb-1.0-0 >/dev/null; }; } \
    || die "could not install libusb-1.0-0; run: sudo apt-get update && sudo apt-get install -y libusb-1.0-0"
fi

# ------------------------------------------------------------------ 1. venv + pinned wheels
if [ ! -x "$PY" ]; then
  say "creating $VENV"
  python3 -m venv "$VENV"
fi
FP=$(fingerprint "$ROOT/requirements.lock")
if ! step_done wheels "$FP"; then
  say "installing pinned dependencies from requirements.lock (first run: about a minute)"
  mkdir -p "$ROOT/build"; log=$ROOT/build/setup-pip.log
  # torch==2.13.0 resolves to the CPU build where a local wheel directory provides it (see README).
  { "$PY" -m pip install -q --disable-pip-version-check -U pip \
    && "$PY" -m pip install -q --disable-pip-version-check -r "$ROOT/requirements.lock"; } > "$log" 2>&1 \
    || { grep -v "is ignored: it is neither" "$log" | tail -30 >&2; die "pip install failed (full log: $log)"; }
  rm -f "$STAMPS/msgs"  # the cmake export fix below must be re-applied after (re)installing wheels
  mark_done wheels "$FP"
fi

# ------------------------------------------------------------------ 2. interface messages (rosidl)
FP=$(fingerprint "$ROOT"/interfaces/tf2_msgs/package.xml "$ROOT"/interfaces/tf2_msgs/CMakeLists.txt \
     "$ROOT"/interfaces/tf2_msgs/msg/*.msg "$ROOT/CMakeLists.txt" "$ROOT/package.xml" "$ROOT"/msg/*.msg \
     "$ROOT/requirements.lock")
if ! step_done msgs "$FP"; then
  PYINC=$("$PY" -c "import sysconfig; print(sysconfig.get_paths()['include'])")
  NPINC=$("$PY" -c "import numpy; print(numpy.get_include())")
  SITE=$("$PY" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
  [ -f "$PYINC/Python.h" ] || die "Python.h not found in $PYINC (Debian: apt-get install -y python3-dev)"
  # The *_msgs wheels' CMake exports hard-code the wheel build host's Python and numpy include
  # directories; point them at this interpreter (idempotent).
  { grep -rl --include='*.cmake' '/opt/python/cp3' "$VENV/share" 2>/dev/null || true; } | xargs -r sed -i -E \
    -e "s#/opt/python/cp3[0-9]+-cp3[0-9]+/lib/python3\.[0-9]+/site-packages/numpy/_core/include#${NPINC}#g" \
    -e "s#/opt/python/cp3[0-9]+-cp3[0-9]+/include/python3\.[0-9]+#${PYINC}#g"
  export CMAKE_PREFIX_PATH=$VENV AMENT_PREFIX_PATH=$VENV VIRTUAL_ENV=$VENV PATH=$VENV/bin:$PATH
  # tf2_msgs (not on pip) and this package's own interfaces (msg/, from the top-level CMakeLists.txt
  # with SSM_PERCEPTION_INTERFACES_ONLY: rosidl only; the Python code stays in the checkout).
  for pkg in tf2_msgs ssm_perception; do
    src=$ROOT/interfaces/$pkg; extra=()
    [ "$pkg" = ssm_perception ] && { src=$ROOT; extra=(-DSSM_PERCEPTION_INTERFACES_ONLY=ON); }
    say "building the interfaces of $pkg with rosidl"
    rm -rf "${BUILD:?}/$pkg"; mkdir -p "$BUILD"
    log=$BUILD/$pkg.log
    { cmake -S "$src" -B "$BUILD/$pkg" -DCMAKE_INSTALL_PREFIX="$VENV" \
        -DCMAKE_BUILD_TYPE=Release -DPython3_EXECUTABLE="$PY" -DBUILD_TESTING=OFF "${extra[@]}" \
      && cmake --build "$BUILD/$pkg" -j"$JOBS" && cmake --install "$BUILD/$pkg"; } > "$log" 2>&1 \
      || { tail -30 "$log" >&2; die "building $pkg failed (full log: $log)"; }
  done
  # rosidl installed site-packages/ssm_perception/{msg,...} with an empty __init__.py and an egg-info:
  # drop both, so that `import ssm_perception` is the checkout (whose __init__ extends its path over
  # this folder) and pip sees one distribution ssm_perception (the development install below).
  rm -rf "$SITE/ssm_perception/__init__.py" "$SITE"/ssm_perception-*.egg-info
  # (An older venv may still hold ssm_perception_msgs, the former separate interface package: it is
  # left alone, so checkouts from before the move keep working in a shared venv; nothing imports it.)
  (cd / && "$PY" -c "import tf2_msgs.msg") || die "the generated message package tf2_msgs does not import"
  rm -f "$STAMPS/package"  # re-check the development install against the new interfaces
  mark_done msgs "$FP"
fi

# ------------------------------------------------------------------ 3. this package (development mode)
# editable_mode=compat puts the checkout on sys.path (a .pth file): `import ssm_perception` finds the
# checkout's package, which then also covers site-packages/ssm_perception/msg (see its __init__.py).
# setuptools' default editable finder would lose to that folder.
FP=$(fingerprint "$ROOT/setup.py" "$ROOT/package.xml" "$ROOT/ssm_perception/__init__.py")
if ! step_done package "$FP" || ! (cd / && "$PY" -c "import ssm_perception.config, ssm_perception.msg") 2>/dev/null; then
  say "installing ssm_perception in development mode"
  mkdir -p "$ROOT/build"; log=$ROOT/build/setup-package.log
  "$PY" -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation \
      --config-settings editable_mode=compat -e "$ROOT" > "$log" 2>&1 \
    || { tail -30 "$log" >&2; die "installing the package failed (full log: $log)"; }
  (cd / && "$PY" -c "import ssm_perception.config, ssm_perception.msg") \
    || die "ssm_perception or its generated messages (ssm_perception.msg) do not import"
  mark_done package "$FP"
fi
say "ready: $VENV (activate with: . .venv/bin/activate)"
