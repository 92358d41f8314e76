"""The ``MLmodel`` file that makes a registered Hugging Face folder an MLflow model, without loading it.

``mlflow.transformers.log_model`` would load the weights and run the model to infer a signature
(and store a second copy of the weights). The folder the merge wrote is already what the
transformers flavor loads, so only its description is written here: the flavor's model files are
the folder itself (``model_binary: "."``) and the tokenizer, which the flavor always reads from
``components/tokenizer``, is a copy of the few tokenizer files (megabytes, not the weights). Then::

    mlflow.transformers.load_model("models:/NAME@champion")            # a text-generation pipeline
    mlflow.transformers.load_model(uri, return_type="components")      # {"model", "tokenizer", ...}
    mlflow.pyfunc.load_model(uri).predict(["prompt"])                   # the generic flavor
"""

from __future__ import annotations

import json
import platform
import shutil
from importlib.metadata import version
from pathlib import Path

from mlflow.models import Model

from mergeline.errors import MergelineError
from mergeline.merge.tokenizer import TOKENIZER_FILES

MLMODEL_FILE = "MLmodel"
TOKENIZER_COMPONENT = Path("components") / "tokenizer"
TASK = "text-generation"


def _architecture(model_dir: Path) -> tuple[str, str | None]:
    """The model class the flavor instantiates, and the weights' dtype, from ``config.json``."""
    config_path = model_dir / "config.json"
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise MergelineError(f"{config_path}: cannot read the model's config ({exc}); nothing registered") from None
    architectures = config.get("architectures") or []
    # A class transformers does not have is resolved by the flavor itself from config.json.
    architecture = architectures[0] if architectures else "AutoModelForCausalLM"
    dtype = config.get("dtype") or config.get("torch_dtype")
    return architecture, f"torch.{dtype}" if isinstance(dtype, str) else None


def write_mlmodel(model_dir: Path, out: Path, source_model: str, run_id: str, model_id: str) -> list[str]:
    """Write ``MLmodel`` and ``components/tokenizer/`` for ``model_dir`` into ``out``; returns what was written.

    ``out`` is logged beside ``model_dir``'s own files, so the flavor's paths are relative to it. A
    folder without tokenizer files gets neither (nothing: the flavor cannot build a pipeline without
    one); its files are still registered and download as they are.
    """
    tokenizer_files = [name for name in TOKENIZER_FILES if (model_dir / name).is_file()]
    if not tokenizer_files:
        return []
    component = out / TOKENIZER_COMPONENT
    component.mkdir(parents=True, exist_ok=True)
    for name in tokenizer_files:
        shutil.copyfile(model_dir / name, component / name)
    architecture, dtype = _architecture(model_dir)
    model = Model(artifact_path=None, run_id=run_id, model_id=model_id)
    flavor = {
        "task": TASK, "instance_type": "TextGenerationPipeline", "pipeline_model_type": architecture,
        "source_model_name": source_model, "model_binary": ".", "components": ["tokenizer"],
        "tokenizer_type": "AutoTokenizer", "transformers_version": version("transformers"), "code": None,
    }
    if dtype:
        flavor["torch_dtype"] = dtype
    model.add_flavor("transformers", **flavor)
    model.add_flavor("python_function", loader_module="mlflow.transformers",
                     python_version=platform.python_version())
    model.save(str(out / MLMODEL_FILE))
    return [MLMODEL_FILE, *(str(TOKENIZER_COMPONENT / name) for name in tokenizer_files)]


__all__ = ["MLMODEL_FILE", "TOKENIZER_COMPONENT", "write_mlmodel"]
