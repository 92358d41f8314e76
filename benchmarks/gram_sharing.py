"""RegMean's Gram matrices with and without shared inputs: file size and collection time, same run.

    .venv/bin/python benchmarks/gram_sharing.py [--records 16] [--repeat 5]

On SmolLM2-135M-Instruct (imported from its wheel), ``collect_grams`` over the same calibration records
with ``share_inputs`` on (one matrix per distinct layer input, the others header aliases) and off (one
matrix per linear layer), alternating; prints one table: bytes of the saved file, fastest collection,
and the ratio, after checking that every weight's matrix is bit-equal between the two.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from mergeline.assets import SMOLLM2, import_base_model  # noqa: E402
from mergeline.finetune.checkpoint import load_causal_lm  # noqa: E402
from mergeline.importance.gram import GramConfig, collect_grams, save_grams  # noqa: E402

RECORDS = "finetune and merge the base model on each task, then score every merge on test and control"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=16)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="gram-sharing-") as tmp:
        work = Path(tmp)
        import_base_model(SMOLLM2, work / "base")
        model, tokenizer = load_causal_lm(work / "base")
        words = RECORDS.split()
        records = [{"id": f"r{i}", "prompt": " ".join(words[i % len(words):] + words) * 2, "choices": [" A", " B"],
                    "label": 0} for i in range(args.records)]
        cfg = GramConfig(calib_examples=args.records, batch_size=8, max_length=64)
        seconds: dict[bool, list[float]] = {True: [], False: []}
        grams = {}
        for round_ in range(args.repeat):
            for share in ((True, False) if round_ % 2 else (False, True)):  # alternate the order
                start = time.perf_counter()
                grams[share] = collect_grams(model, tokenizer, records, cfg, share_inputs=share)
                seconds[share].append(time.perf_counter() - start)
        shared, full = grams[True].expanded(), grams[False].expanded()
        assert shared.keys() == full.keys() and all(torch.equal(shared[n], full[n]) for n in full)
        size = {share: save_grams(grams[share], work / f"{share}.safetensors").stat().st_size for share in grams}
    print(f"SmolLM2-135M-Instruct, {args.records} records, {len(full)} linear weights: "
          f"{len(grams[True].matrices)} stored + {len(grams[True].aliases)} aliases; matrices bit-equal\n")
    print("| | one per layer | shared inputs | shared / per layer |\n|---|---:|---:|---:|")
    print(f"| gram.safetensors bytes | {size[False]:,} | {size[True]:,} | {size[True] / size[False]:.3f} |")
    fast = {share: min(s) for share, s in seconds.items()}
    print(f"| collect seconds (fastest of {args.repeat}) | {fast[False]:.2f} | {fast[True]:.2f} | "
          f"{fast[True] / fast[False]:.3f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
