#!/usr/bin/env bash
# `make setup-gpu`: install mamba-ssm (the 'mamba_ssm' backend of the temporal core) against this
# machine's own CUDA PyTorch, offline, building its CUDA extension for the local GPU only.
#
#   scripts/setup_gpu.sh [--carry DIR] [--no-cuda-ext] [--force] [--report FILE]
#
#   --carry DIR     where the source archive lies (default .carry/, filled by scripts/fetch_gpu_sources.sh)
#   --no-cuda-ext   skip the compiled selective-scan extension (10 s instead of ~3 min): the Mamba-2
#                   Triton kernels that MambaCore uses still work (mamba_kernels.py registers a stand-in)
#   --force         reinstall even if the same version is already importable
#   --report FILE   write what happened as JSON (outcome, versions, arch, build seconds)
#   --no-entry-point  do not install this package's console scripts (ssm-perception, perception_node)
#                   into that Python (by default: `pip install -e .` without dependencies, offline; a
#                   small wrapper script if pip cannot build the editable install)
# Environment: PYTHON (default: .venv/bin/python if its torch has CUDA, else python3), MAX_JOBS.
#
# Why the patching: mamba-ssm's setup.py hard-codes -gencode for ~9 GPU architectures and ignores
# TORCH_CUDA_ARCH_LIST, which makes the build several times longer than needed; we rewrite its
# gencode list in an unpacked copy to the one architecture torch reports for this GPU. And it tries
# to download a prebuilt wheel unless MAMBA_FORCE_BUILD=TRUE (fatal without internet).
# Everything else in the repository runs without this step.
set -euo pipefail

VERSION="${MAMBA_SSM_VERSION:-2.3.2.post1}"
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CARRY="$ROOT/.carry"
CUDA_EXT=1
FORCE=0
ENTRY=1
REPORT=""

say() { printf '\033[1m[setup-gpu]\033[0m %s\n' "$*"; }
die() {
  printf '\033[31m[setup-gpu] error:\033[0m %s\n' "$*" >&2
  [ -n "$REPORT" ] && write_report "failed" "$*"
  exit 1
}
write_report() {  # outcome, message
  "${PY:-python3}" - "$REPORT" "$1" "$2" "${ARCH:-}" "${BUILD_S:-0}" "$CUDA_EXT" "$VERSION" <<'EOF' || true
import json, sys, importlib.metadata as md
path, outcome, msg, arch, build_s, cuda_ext, want = sys.argv[1:8]
info = {"outcome": outcome, "message": msg, "mamba_ssm_wanted": want, "arch": arch,
        "build_seconds": round(float(build_s), 1), "cuda_extension": cuda_ext == "1"}
try:
    import torch
    info.update(torch=torch.__version__, torch_cuda=torch.version.cuda,
                device=torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)
except Exception as exc:  # noqa: BLE001
    info["torch"] = f"not importable: {exc}"
for pkg in ("mamba-ssm", "triton", "einops"):
    try:
        info[pkg.replace("-", "_")] = md.version(pkg)
    except md.PackageNotFoundError:
        info[pkg.replace("-", "_")] = None
with open(path, "w") as f:
    json.dump(info, f, indent=2)
EOF
}

while [ $# -gt 0 ]; do
  case "$1" in
    --carry) CARRY="$2"; shift 2 ;;
    --no-cuda-ext) CUDA_EXT=0; shift ;;
    --force) FORCE=1; shift ;;
    --report) REPORT="$2"; shift 2 ;;
    --no-entry-point) ENTRY=0; shift ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    *) die "unknown argument '$1' (see --help)" ;;
  esac
done

# ------------------------------------------------------------------ 1. a Python whose torch has CUDA
has_cuda_torch() { "$1" -c 'import torch, sys; sys.exit(0 if torch.version.cuda else 1)' 2>/dev/null; }
if [ -n "${PYTHON:-}" ]; then
  PY="$PYTHON"
elif [ -x "$ROOT/.venv/bin/python" ] && has_cuda_torch "$ROOT/.venv/bin/python"; then
  PY="$ROOT/.venv/bin/python"
else
  PY=python3  # on the GPU image this is the Python that holds the CUDA torch (the bare `pip` is not)
fi
command -v "$PY" >/dev/null || die "no Python '$PY' found (set PYTHON=/path/to/python with a CUDA torch)"
has_cuda_torch "$PY" || die "$PY has no CUDA build of torch (torch.version.cuda is None): this step is for a CUDA machine; the CPU setup needs none of it"
ARCH=$("$PY" -c 'import torch, sys
if not torch.cuda.is_available():
    sys.exit("no CUDA device visible to torch (check nvidia-smi and CUDA_VISIBLE_DEVICES)")
ma, mi = torch.cuda.get_device_capability(0)
print(f"{ma}{mi}")') || die "no CUDA device visible to torch ($PY)"
say "python $PY, torch $("$PY" -c 'import torch; print(torch.__version__)'), GPU sm_$ARCH"

# ------------------------------------------------------------------ 1b. this package's entry points
# `ssm-perception` (bench, evaluate, simulate, ...) and `perception_node` for the same Python, so the
# GPU machine runs the same commands as the CPU one. Offline: no dependencies are resolved (torch
# and the rest are there; rclpy is only needed by the node).
install_entry_point() {
  [ "$ENTRY" = 1 ] || return 0
  if "$PY" -m pip install --no-index --no-build-isolation --no-deps --quiet -e "$ROOT" >/dev/null 2>&1; then
    say "ssm-perception installed into $PY (editable: pip install -e $ROOT)"
  else
    local bin
    bin=$("$PY" -c 'import sysconfig; print(sysconfig.get_path("scripts"))')
    mkdir -p "$bin" 2>/dev/null || true
    if [ -w "$bin" ]; then
      for pair in "ssm-perception:ssm_perception.cli" "perception_node:ssm_perception.nodes.perception_node"; do
        printf '#!/bin/sh\nPYTHONPATH="%s${PYTHONPATH:+:$PYTHONPATH}" exec "%s" -c "import sys; from %s import main; sys.exit(main())" "$@"\n' \
          "$ROOT" "$PY" "${pair#*:}" >"$bin/${pair%%:*}"
        chmod +x "$bin/${pair%%:*}"
      done
      say "ssm-perception: pip could not build the editable install; wrapper scripts written to $bin"
    else
      say "warning: could not install the ssm-perception entry point (pip failed, $bin not writable); use $PY -m ssm_perception.cli"
    fi
  fi
  "$PY" -c 'import ssm_perception.cli' 2>/dev/null || PYTHONPATH="$ROOT" "$PY" -c 'import ssm_perception.cli' \
    || die "ssm_perception does not import with $PY"
}
install_entry_point

# ------------------------------------------------------------------ 2. already there?
installed=$("$PY" -c 'import importlib.metadata as m; print(m.version("mamba-ssm"))' 2>/dev/null || true)
ext_ok() { "$PY" -c 'import torch, selective_scan_cuda' 2>/dev/null; }
if [ "$FORCE" = 0 ] && [ "$installed" = "$VERSION" ] && { [ "$CUDA_EXT" = 0 ] || ext_ok; }; then
  say "mamba-ssm $VERSION already installed$( [ "$CUDA_EXT" = 1 ] && echo ' with its CUDA extension'); nothing to do (--force rebuilds)"
  [ -n "$REPORT" ] && write_report "already-installed" "mamba-ssm $VERSION present"
  exit 0
fi

# ------------------------------------------------------------------ 3. the carried source archive
SDIST="$CARRY/mamba_ssm-$VERSION.tar.gz"
[ -f "$SDIST" ] || die "source archive $SDIST not found. On a machine with a package index run
    scripts/fetch_gpu_sources.sh        # -> .carry/mamba_ssm-$VERSION.tar.gz
and bring .carry/ along (this machine needs no internet)"

if [ "$CUDA_EXT" = 1 ]; then
  NVCC=""
  if [ -n "${CUDA_HOME:-}" ] && [ -x "$CUDA_HOME/bin/nvcc" ]; then NVCC="$CUDA_HOME/bin/nvcc"; fi
  [ -z "$NVCC" ] && NVCC=$(command -v nvcc || true)
  [ -z "$NVCC" ] && [ -x /usr/local/cuda/bin/nvcc ] && NVCC=/usr/local/cuda/bin/nvcc
  [ -n "$NVCC" ] || die "nvcc not found (set CUDA_HOME), or use --no-cuda-ext for the Triton-only install"
  export CUDA_HOME="${CUDA_HOME:-$(dirname "$(dirname "$NVCC")")}"
  say "nvcc: $("$NVCC" --version | tail -1)"
fi

# ------------------------------------------------------------------ 4. unpack, restrict the gencode list, build
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
tar -xzf "$SDIST" -C "$WORK"
SRC="$WORK/mamba_ssm-$VERSION"
[ -f "$SRC/setup.py" ] || die "unexpected archive layout: $SRC/setup.py missing"
if [ "$CUDA_EXT" = 1 ]; then
  "$PY" - "$SRC/setup.py" "$ARCH" <<'EOF' || die "could not restrict the gencode list in setup.py (layout changed?)"
import sys
path, arch = sys.argv[1], sys.argv[2]
src = open(path).read()
anchor = "    # HACK: The compiler flag -D_GLIBCXX_USE_CXX11_ABI"
if src.count(anchor) != 1 or 'cc_flag.append("-gencode")' not in src:
    sys.exit(f"anchor not found in {path}")
patch = (f'    cc_flag = [f for f in cc_flag if f != "-gencode" and not f.startswith("arch=")]'
         f' + ["-gencode", "arch=compute_{arch},code=sm_{arch}"]  # setup_gpu.sh: local GPU only\n')
open(path, "w").write(src.replace(anchor, patch + anchor))
EOF
  say "building mamba-ssm $VERSION for sm_$ARCH only (MAX_JOBS=${MAX_JOBS:-$(nproc)}; a few minutes)"
else
  export MAMBA_SKIP_CUDA_BUILD=TRUE
  say "installing mamba-ssm $VERSION without its CUDA extension (Triton kernels only)"
fi
export MAMBA_FORCE_BUILD=TRUE MAX_JOBS="${MAX_JOBS:-$(nproc)}" TORCH_CUDA_ARCH_LIST="${ARCH:0:1}.${ARCH:1}"
LOG="$WORK/build.log"
t0=$SECONDS
if ! "$PY" -m pip install --no-index --no-build-isolation --no-deps --no-cache-dir --force-reinstall \
    "$SRC" >"$LOG" 2>&1; then
  tail -40 "$LOG" >&2
  die "pip install of mamba-ssm failed (log above)"
fi
BUILD_S=$((SECONDS - t0))
say "installed in ${BUILD_S} s"

# ------------------------------------------------------------------ 5. check it imports and runs a step
cd "$ROOT"
"$PY" - <<'EOF' || die "mamba-ssm installed but the kernels do not import or run (see above)"
import torch
from ssm_perception.temporal import mamba_kernels
ssu, _ = mamba_kernels._ops()
n, nh, p, ds = 8, 2, 4, 8
dev = "cuda"
state = torch.randn(n, nh, p, ds, device=dev)
x = torch.randn(n, nh, p, device=dev)
dt = torch.rand(n, nh, p, device=dev)
A = -torch.rand(nh, p, ds, device=dev)
B = torch.randn(n, 1, ds, device=dev)
C = torch.randn(n, 1, ds, device=dev)
D = torch.randn(nh, p, device=dev)
new = state * torch.exp(dt[..., None] * A) + dt[..., None] * B[:, :1, None, :] * x[..., None]
ref = torch.einsum("bhpn,bhn->bhp", new, C.expand(n, nh, ds)) + D * x
# (the stock kernel needs D and dt_bias as tensors: it unpacks their strides unconditionally)
out = ssu(state, x, dt, A, B, C, D=D, dt_bias=torch.zeros(nh, p, device=dev))
err = max((out - ref).abs().max().item(), (state - new).abs().max().item())
assert err < 1e-4, err
print(f"selective_state_update ok (max abs err {err:.2e})")
EOF
[ "$CUDA_EXT" = 1 ] && { ext_ok || die "selective_scan_cuda does not import after the build"; }
if [ "$CUDA_EXT" = 1 ]; then MSG="mamba-ssm $VERSION built with its CUDA extension for sm_$ARCH only"
else MSG="mamba-ssm $VERSION installed without its CUDA extension (Triton kernels only)"; fi
[ -n "$REPORT" ] && write_report "installed" "$MSG"
say "done: mamba-ssm $("$PY" -c 'import importlib.metadata as m; print(m.version("mamba-ssm"))')"
