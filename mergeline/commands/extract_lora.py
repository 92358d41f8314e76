"""``mergeline extract-lora MODEL --base BASE --rank R --out DIR``: a model's difference as a PEFT LoRA adapter."""

from __future__ import annotations

import argparse

REPORT_FILE = "extract_report.json"


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "extract-lora", help="turn a merged or fine-tuned model into a PEFT LoRA adapter against its base",
        description="Truncated SVD of (model − base) per linear weight matrix, written as a PEFT LoRA adapter "
                    "(adapter_config.json, adapter_model.safetensors) of the given rank, with the "
                    f"reconstruction error per matrix in {REPORT_FILE}.")
    parser.add_argument("model", help="model folder (safetensors) to extract from, e.g. a merged variant")
    parser.add_argument("--base", required=True, help="base model folder the adapter applies to")
    parser.add_argument("--rank", type=int, required=True, help="LoRA rank r (>= 1)")
    parser.add_argument("--out", required=True, help="adapter folder: new or empty (written atomically)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace --out when it is a previous adapter of mergeline holding only the files its "
                             "marker (.mergeline-output) lists (never any other folder)")
    parser.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default=None,
                        help="dtype of the factors (default: the model's)")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")


def run(args: argparse.Namespace) -> int:
    import json

    import torch
    from safetensors.torch import save_file

    from mergeline.errors import MergelineError
    from mergeline.io.atomic import atomic_dir, check_output_dir
    from mergeline.io.safetensors_io import CheckpointReader
    from mergeline.merge.lora_extract import adapter_config, extract_lora, summarize

    if args.rank < 1:
        raise MergelineError(f"--rank: must be >= 1, got {args.rank}")
    check_output_dir(args.out, [args.model, args.base], kind="adapter", overwrite=args.overwrite)
    with CheckpointReader(args.model) as model, CheckpointReader(args.base) as base:
        for name in model.names():
            if name not in base:
                raise MergelineError(f"{args.base}: has no tensor {name!r}, which {args.model} holds")
            if model.shape(name) != base.shape(name):
                raise MergelineError(f"{args.model}: tensor {name!r} has shape {model.shape(name)}, "
                                     f"the base {base.shape(name)}")

        def read_pair(name: str) -> tuple[torch.Tensor, torch.Tensor]:
            return model.get(name), base.get(name)

        dtype = getattr(torch, args.dtype) if args.dtype else None
        progress = None if args.quiet else (lambda line: print(line, flush=True))
        factors, report = extract_lora(model.names(), read_pair, args.rank, dtype=dtype, progress=progress)
    if not factors:
        raise MergelineError(f"{args.model}: no linear weight matrices to extract")
    with atomic_dir(args.out, kind="adapter", overwrite=args.overwrite) as tmp:
        save_file(factors, str(tmp / "adapter_model.safetensors"), metadata={"format": "pt"})
        config = adapter_config(report, base_model=str(args.base))
        (tmp / "adapter_config.json").write_text(json.dumps(config, indent=2) + "\n")
        (tmp / REPORT_FILE).write_text(json.dumps(report.as_dict(), indent=2) + "\n")
    for line in summarize(report):
        print(line)
    print(f"adapter: {args.out}")
    return 0
