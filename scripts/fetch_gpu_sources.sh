#!/usr/bin/env bash
# Download the mamba-ssm source archive that scripts/setup_gpu.sh installs offline on a GPU machine.
#
# Run here (a machine with a package index and a venv holding torch); the archive lands in .carry/
# (git-ignored), which travels to the GPU machine as a carried path. A plain `pip download` fails
# because mamba-ssm's setup.py imports torch while preparing metadata, hence --no-build-isolation,
# and MAMBA_SKIP_CUDA_BUILD keeps it from looking for nvcc here.
set -euo pipefail

VERSION="${MAMBA_SSM_VERSION:-2.3.2.post1}"
DEST="${1:-.carry}"
PY="${PYTHON:-.venv/bin/python}"

cd "$(dirname "$0")/.."
if [[ ! -x "$PY" ]]; then
    echo "error: $PY not found; run 'make setup' first or set PYTHON=/path/to/python (with torch)" >&2
    exit 1
fi
mkdir -p "$DEST"
if compgen -G "$DEST/mamba_ssm-${VERSION}.tar.gz" >/dev/null; then
    echo "already there: $DEST/mamba_ssm-${VERSION}.tar.gz"
    exit 0
fi
MAMBA_SKIP_CUDA_BUILD=TRUE "$PY" -m pip download --no-deps --no-build-isolation \
    --no-binary=:all: -d "$DEST" "mamba-ssm==${VERSION}"
ls -l "$DEST"
