"""``mergeline merge CONFIG.yaml --out DIR [--device cpu|cuda] [--shard-size 2GB]``: one merge, no pipeline."""

from __future__ import annotations

import argparse


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "merge", help="merge models from a mergekit-style YAML config",
        description="Merge models tensor by tensor (streaming safetensors) as CONFIG says "
                    "(mergekit's YAML schema: merge_method, base_model, models or slices, parameters, dtype, "
                    "out_dtype, tokenizer_source, chat_template).")
    parser.add_argument("config", help="merge config YAML")
    parser.add_argument("--out", required=True,
                        help="output model folder: new or empty (written atomically when complete)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace --out when it is a previous merged model of mergeline holding only the files "
                             "its marker (.mergeline-output) lists (never any other folder)")
    parser.add_argument("--device", default="cpu", help="compute device: cpu (default) or cuda[:N]")
    parser.add_argument("--shard-size", default="2GB", help="largest weight shard, e.g. 500MB, 2GB (default 2GB)")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")


def run(args: argparse.Namespace) -> int:
    from mergeline.merge.checks import load_merge_config
    from mergeline.merge.config import input_paths
    from mergeline.io.atomic import check_output_dir
    from mergeline.io.safetensors_io import parse_size
    from mergeline.merge.engine import run_merge

    config = load_merge_config(args.config)
    check_output_dir(args.out, [args.config, *input_paths(config)], kind="merge", overwrite=args.overwrite)
    result = run_merge(
        config, args.out, device=args.device, max_shard_bytes=parse_size(args.shard_size), overwrite=args.overwrite,
        progress=None if args.quiet else (lambda line: print(line, flush=True)),
    )
    print(f"merged model: {result.out_dir}")
    return 0
