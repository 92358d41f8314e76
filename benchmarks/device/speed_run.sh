#!/bin/bash
# The GPU tests and the CUDA rows of benchmarks/merge_speed.py on a GPU machine without internet, one step per call (each
# under the 10-minute limit). Carry .speed-carry/ (benchmarks/device/speed_pack.sh builds it): wheels/,
# put first on the path, and fallback/, put last (used only where the device has no copy). The synthetic
# models are cached in /tmp/ms, so on the same warm machine a later step reuses them; a fresh machine
# rebuilds them on the GPU in seconds.
#   STEP=tests  bash benchmarks/device/speed_run.sh   # pytest -m gpu over the CUDA tests
#   STEP=big    bash benchmarks/device/speed_run.sh   # 4 x 2.97B bf16 on CUDA: METHODS= (default TA,TIES,DELLA,MODEL_STOCK,LINEAR)
#   STEP=small  bash benchmarks/device/speed_run.sh   # hidden 512 x 8 layers, 3 fine-tunes, CUDA and CPU, every method
# Each step writes its table (or JUnit XML) and log to $OUT.
set -uo pipefail
CARRY=${CARRY:-$PWD/.speed-carry}
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
if [ ! -d /tmp/pp/pydantic ]; then
  mkdir -p /tmp/pp /tmp/pp-fallback
  for w in "$CARRY"/wheels/*.whl; do python3 -m zipfile -e "$w" /tmp/pp; done
  for w in "$CARRY"/fallback/*.whl; do python3 -m zipfile -e "$w" /tmp/pp-fallback; done
fi
export PYTHONPATH=/tmp/pp:$PWD:/tmp/pp-fallback PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
SPEED="python3 benchmarks/merge_speed.py --workdir /tmp/ms --dtype bfloat16"
case "${STEP:-tests}" in
  tests) python3 -m pytest -q -p no:cacheprovider -m gpu -rs tests/integration/test_merge_cuda.py tests/integration/test_mergekit_parity.py \
           tests/unit/merge/test_merge_engine.py --junitxml="$OUT/gpu-tests.xml" 2>&1 | tail -40 ;;
  big)   $SPEED --device cuda --params 3e9 --finetunes 4 --methods "${METHODS:-TA,TIES,DELLA,MODEL_STOCK,LINEAR}" \
           --table-out "$OUT/speed-cuda-3e9-${TAG:-a}.md" 2>&1 | tee "$OUT/speed-big-${TAG:-a}.log" | tail -30 ;;
  small) $SPEED --device cuda,cpu --sizes 512x8 --finetunes 3 \
           --methods TA,TIES,DELLA,MODEL_STOCK,LINEAR,TSV,ISO_C,ISO_CTS,CONSENSUS_TA,CONSENSUS_TIES \
           --table-out "$OUT/speed-512x8.md" 2>&1 | tee "$OUT/speed-small.log" | tail -30 ;;
  *) echo "STEP must be tests, big or small" >&2; exit 2 ;;
esac
