#!/usr/bin/env bash
# Create the virtual environment $VENV (once) and install into it: torch first, in the build that fits
# this machine, then the project with its test and cluster (Ray) extras. Installing the project first
# would pull PyPI's default torch, on Linux the CUDA build with GBs of NVIDIA packages, even on a machine
# without a GPU.
# Called by the Makefile; TORCH_INDEX=URL installs torch from that index instead (e.g. another CUDA).
set -euo pipefail

python=${PYTHON:-python3}
venv=${VENV:-.venv}
torch="torch==${TORCH_VERSION:-2.13.0}"

if ! command -v "$python" >/dev/null 2>&1; then
    echo "error: '$python' not found. medseg needs Python 3.10 or newer: install it, or name it: make PYTHON=python3.12 run" >&2
    exit 1
fi
if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 10))'; then
    echo "error: medseg needs Python 3.10 or newer, and '$python' is $("$python" -V 2>&1). Name a newer one: make PYTHON=python3.12 run" >&2
    exit 1
fi
if [ ! -x "$venv/bin/python" ]; then
    echo "== creating $venv with $("$python" -V 2>&1)"
    if ! "$python" -m venv "$venv"; then
        echo "error: '$python -m venv' failed (on Debian and Ubuntu: apt install python3-venv)" >&2
        rm -rf "$venv"
        exit 1
    fi
fi
pip=("$venv/bin/python" -m pip)
"${pip[@]}" install --quiet --upgrade pip

if [ -n "${TORCH_INDEX:-}" ]; then
    echo "== $torch from $TORCH_INDEX"
    "${pip[@]}" install "$torch" --index-url "$TORCH_INDEX"
elif nvidia-smi -L >/dev/null 2>&1; then
    echo "== nvidia-smi finds a GPU: $torch, CUDA build (PyPI's)"
    "${pip[@]}" install "$torch"
else
    echo "== no NVIDIA GPU: $torch, CPU build"
    # An extra index, not the only one: its torch==X+cpu outranks PyPI's torch==X, and where it cannot be
    # reached (a machine that sees only PyPI and a local wheel folder) pip warns and takes a CPU wheel found there.
    # The wheel alone first, so that this index is asked once, then its dependencies from the usual indexes.
    "${pip[@]}" install "$torch" --no-deps --extra-index-url https://download.pytorch.org/whl/cpu
    "${pip[@]}" install "$torch"
fi

echo "== medseg and its dependencies (versions from constraints.txt)"
# the versions a fresh install resolved and the tests passed with: pip backtracked for many minutes
# without them (the AWS libraries that the S3 test server and the DVC S3 remote pull in disagree)
"${pip[@]}" install -c constraints.txt -e ".[test,cluster]"
"$venv/bin/python" -c 'import torch; print("torch", torch.__version__, "CUDA available:", torch.cuda.is_available())'
