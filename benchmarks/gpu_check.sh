#!/usr/bin/env bash
# The GPU checks as one command on a lent machine (the device tool's `run`, timeout_s 600):
#   here, once:  bash benchmarks/gpu_wheels.sh       # the packages that machine lacks, into .whl/
#   there:       bash benchmarks/gpu_check.sh        # run with carry [".whl"]; results land in $OUT
# 1. .whl/ installed into /tmp/site (that machine's python3 holds CUDA torch; no registry there);
# 2. tests/test_cuda.py (every torch plugin on CUDA vs the CPU, the torch resampler on the device,
#    a run on CUDA, the out-of-memory back-off) and the resampler's tests;
# 3. benchmarks/gpu.py over GPU_FILES files (default 869 x 30 s), its JSON and logs into $OUT.
# Each step has its own time limit so that a slow one still leaves the others' results.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-$(mktemp -d)}"
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    .whl/*.whl || exit 1
  export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONUNBUFFERED=1 EMBEDKIT_OFFLINE=1
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1
python3 -c "import torch; print(torch.__version__, torch.version.cuda, torch.cuda.get_device_name(0))" \
  2>&1 | tee "$OUT/torch.txt"
timeout "${TEST_LIMIT:-210}" python3 -m pytest -q -rs -p no:cacheprovider tests/test_cuda.py tests/test_polyphase.py \
  2>&1 | tee "$OUT/tests.log"
timeout "${BENCH_LIMIT:-330}" python3 benchmarks/gpu.py --files "${GPU_FILES:-869}" --json "$OUT/gpu.json" \
  2>&1 | tee "$OUT/gpu.log"
