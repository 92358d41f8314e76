"""How fast the merge engine's loader moves a model set's bytes, against one thread reading them.

    .venv/bin/python benchmarks/read_probe.py --params 1.5e9 --device cuda   # on a GPU machine
    .venv/bin/python benchmarks/read_probe.py --params 1e6 --device cpu      # smoke size

Builds (or reuses, in ``--workdir``) the same synthetic set as ``merge_speed.py`` (base + 4 bf16
fine-tunes), reads it once to warm the page cache, then prints one markdown table: one thread reading
every file into a reused 64 MB buffer (the read bound of ``merge_speed.py``), then
:class:`mergeline.io.prefetch.TensorPrefetcher` fetching every tensor to ``--device`` for each
``--threads`` x ``--pieces-mb`` pair (at most 1 GB in flight, as the engine), and sha256 on one core
(the writer hashes each output shard). Each row: GB/s and the ratio to the one-thread read.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import time
from collections import deque
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from _child import read_files  # noqa: E402
from _synthetic_models import build_model_set  # noqa: E402

from mergeline.io.prefetch import TensorPrefetcher  # noqa: E402
from mergeline.io.safetensors_io import CheckpointReader  # noqa: E402

WINDOW = 1 << 30


def loader(readers: list[CheckpointReader], device: torch.device, threads: int, piece: int) -> float:
    with TensorPrefetcher(device, threads, piece) as load:
        start = time.perf_counter()
        pending: deque = deque()
        in_flight = 0
        for reader in readers:
            for name in reader.names():
                pending.append(load.fetch(reader, name))
                in_flight += pending[-1].nbytes
                while in_flight > WINDOW:
                    done = pending.popleft()
                    load.wait(done)
                    in_flight -= done.nbytes
        while pending:
            load.wait(pending.popleft())
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - start


def sha256_seconds(nbytes: int) -> float:
    data = os.urandom(nbytes)
    start = time.perf_counter()
    hashlib.sha256(data).hexdigest()
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--params", type=float, default=1.5e9, help="parameters per model")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", default="1,4,8,16", help="comma-separated loader thread counts")
    p.add_argument("--pieces-mb", default="8,32", help="comma-separated piece sizes in MB")
    p.add_argument("--workdir", type=Path, default=HERE.parent / "bench_out" / "merge_speed")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.zeros(1, device=device)  # context creation stays out of the timings
    tag = f"{args.params / 1e9:.3g}B-bfloat16-4ft"
    models = build_model_set(args.workdir / "models" / tag, args.params, 4, "bfloat16", device=args.device)
    files = sorted(f for m in models.all_models for f in m.glob("*.safetensors"))
    readers = [CheckpointReader(m) for m in models.all_models]
    total, _ = read_files(files)  # warm the page cache
    bound = total / read_files(files)[1] / 1e9
    rows = [("one thread, 64 MB buffer (read bound)", bound)]
    for threads in (int(t) for t in args.threads.split(",")):
        for mb in (int(m) for m in args.pieces_mb.split(",")):
            seconds = loader(readers, device, threads, mb << 20)
            rows.append((f"loader to {device.type}, {threads} threads x {mb} MB", total / seconds / 1e9))
    rows.append(("sha256, one core (256 MB)", (256 << 20) / sha256_seconds(256 << 20) / 1e9))
    print(f"### read_probe: {tag}, {total / 1e9:.2f} GB of inputs in the page cache, device {device}\n")
    print("| what | GB/s | vs one-thread read |")
    print("|---|---|---|")
    for what, rate in rows:
        print(f"| {what} | {rate:.2f} | {rate / bound:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
