"""Checking a merge config against its method, and reading one from YAML, checked.

Above :mod:`mergeline.merge.config`, :mod:`mergeline.merge.slices` and :mod:`mergeline.merge.tokenizer`:
the full check needs the slice planner's and the tokenizer's own checks, and both of those read the
config's types, so the check cannot live in ``config`` itself.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

from mergeline.errors import MergelineError
from mergeline.io.safe_read import load_yaml_file
from mergeline.merge.config import (
    MergeConfig,
    check_model_count,
    check_model_keys,
    check_numbers,
    check_parameter_keys,
    ignored_parameters,
    input_indices,
    parse_merge_config,
    with_base_input,
)
from mergeline.merge.slices import check_slices
from mergeline.merge.tokenizer import check_tokenizer_settings


def load_merge_config(path: str | os.PathLike[str]) -> MergeConfig:
    """Read a merge YAML, validate it and check it against its method."""
    path = Path(path)
    config = parse_merge_config(load_yaml_file(path, "config"), str(path))
    check_config(config)
    return config


def check_config(config: MergeConfig) -> None:
    """Check a config against its method: known method, model count, base, parameter names, dtypes."""
    method = config.method_class()
    largest = torch.finfo(config.compute_dtype()).max
    check_numbers("parameters", config.parameters, largest)
    for i, entry in enumerate(config.models or []):
        check_numbers(f"models[{i}] ({entry.model})", entry.parameters, largest)
    for k, piece in enumerate(config.slices or []):
        check_numbers(f"slices[{k}]", piece.parameters, largest)
        for i, source in enumerate(piece.sources):
            check_numbers(f"slices[{k}].sources[{i}] ({source.model})", source.parameters, largest)
    config.output_dtype()
    check_tokenizer_settings(config)
    if config.slices:
        check_slices(config, method)
        return
    assert config.models is not None
    if method.requires_base and not config.base_model:
        raise MergelineError(f"merge_method {method.name!r} needs base_model")
    check_model_count(method, len(input_indices(config, method)), "")
    check_parameter_keys(method, config.parameters, "parameters")
    for i in input_indices(config, method):
        check_model_keys(method, config.models[i].parameters, f"models[{i}] ({config.models[i].model})")


def checked(config: MergeConfig) -> tuple[MergeConfig, list[str]]:
    """The config as merged (base appended where it is an input) after every check, and the ignored
    parameters, each printed as one ``warning:`` line."""
    config = with_base_input(config)
    check_config(config)
    ignored = ignored_parameters(config)
    for line in ignored:
        print(f"warning: {line}", file=sys.stderr, flush=True)
    return config, ignored
