#!/usr/bin/env bash
# Fill .whl/ (ignored by git) with the wheels bench/gpu.py needs on a bare CUDA image that has torch, torchvision,
# torchaudio, numpy and no network: valor_core's other imports, at the versions of this checkout's .venv.
# Run on a machine with the package index (after `bash bin/setup`); then on the GPU machine (see bench/gpu.py):
#   python3 -m pip install -q --no-index --no-deps --no-compile --target .site .whl/*.whl
#   PYTHONPATH=$PWD:$PWD/.site python3 bench/gpu.py
# PY_VERSION (default 3.12) is the GPU image's Python.
set -euo pipefail
cd "$(dirname "$0")/.."
PY_VERSION=${PY_VERSION:-3.12}
# the GPU reference probe's list, plus PyAV and a transformers that laion_clap
# imports with; the image's own numeric stack (numba, scikit-learn, h5py, ...) is used as it is
PKGS=(open_clip_torch ftfy wcwidth laion_clap torchlibrosa braceexpand webdataset librosa soundfile soxr audioread
      pooch decorator platformdirs decord av transformers tokenizers huggingface_hub safetensors)
pins=()
for p in "${PKGS[@]}"; do
  v=$(.venv/bin/python -m pip show "$p" 2>/dev/null | awk '/^Version:/{print $2}')
  pins+=("$p${v:+==$v}")
done
rm -rf .whl && mkdir -p .whl
.venv/bin/python -m pip download -q --no-deps --only-binary=:all: --python-version "$PY_VERSION" --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform any \
  -d .whl "${pins[@]}"
.venv/bin/python -m pip wheel -q --no-deps -w .whl wget progressbar  # sdist-only dependencies of laion_clap
du -sh .whl && ls .whl | wc -l
