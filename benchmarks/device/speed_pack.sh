#!/bin/bash
# Build .speed-carry/ for benchmarks/device/speed_run.sh: the wheels the device's Python 3.12 lacks (the
# product's own, pytest, and mergekit 0.1.5 with the dependencies it has no copy of there) in wheels/, and
# in fallback/ those it usually has (put last on the path, used only where missing). About 40 MB.
#   bash benchmarks/device/speed_pack.sh [OUT_DIR]
set -euo pipefail
cd "$(dirname "$0")/../.."; DST=${1:-.speed-carry}; mkdir -p "$DST/wheels" "$DST/fallback"
. benchmarks/device/wheels.sh
py312_wheels "$DST/wheels" pydantic==2.14.3 pydantic_core==2.50.4 annotated_types==0.8.0 typing_inspection==0.4.5 \
  typing_extensions==4.16.0 pyyaml==6.0.3 tqdm==4.70.1 packaging==26.4 pytest==9.2.0 pluggy==1.7.0 iniconfig==2.3.1 \
  dill==0.4.1 pydot==4.0.1 pyparsing==3.3.3 mergekit==0.1.5 click==8.5.1 immutables==0.21 peft==0.21.2
py312_wheels "$DST/fallback" scipy protobuf psutil
du -sh "$DST"
