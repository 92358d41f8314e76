"""Merge config: mergekit schema, gradient/filter resolution (checked against mergekit 0.1.5), validation."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from mergeline.errors import MergelineError
from mergeline.merge.checks import check_config, load_merge_config
from mergeline.merge.config import ConditionalParameter, MergeConfig, ParameterResolver, evaluate_setting, ignored_parameters


def _config(method: str = "ties", models: list | None = None, **extra) -> MergeConfig:
    if models is None:
        models = [{"model": "a", "parameters": {"weight": 1.0, "density": 0.5}}]
    return MergeConfig.model_validate({"merge_method": method, "base_model": "base", "models": models, **extra})


def _write(tmp_path: Path, data: object) -> Path:
    path = tmp_path / "merge.yaml"
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return path


@pytest.mark.parametrize(
    ("setting", "t", "expected"),
    [
        (0.3, 0.7, 0.3),
        ([0.0, 1.0], 0.5, 0.5),
        ([0.0, 0.5, 1.0], 0.25, 0.25),
        ([0.2, 0.4, 1.0], 1.0, 1.0),
        ([1, 3], 0.5, 2.0),
    ],
)
def test_gradient_interpolation(setting, t, expected) -> None:
    assert evaluate_setting(setting, "model.layers.1.mlp.up_proj.weight", t, numeric=True) == pytest.approx(expected)


def test_discrete_and_numeric_string_gradients() -> None:
    assert evaluate_setting([True, False], "x", 0.4, numeric=False) is True
    assert evaluate_setting([True, False], "x", 1.0, numeric=False) is False
    assert evaluate_setting(["a", "b", "c"], "x", 0.6, numeric=False) == "b"
    # PyYAML reads 1e-1 as a string; a numeric parameter still interpolates it.
    assert evaluate_setting(["1e-1", 0.3], "x", 0.5, numeric=True) == pytest.approx(0.2)


def test_filters_first_match_wins() -> None:
    setting = [
        ConditionalParameter(filter="self_attn", value=0.5),
        ConditionalParameter(filter="mlp", value=[0.0, 1.0]),
        ConditionalParameter(value=1.0),
    ]
    assert evaluate_setting(setting, "model.layers.0.self_attn.q_proj.weight", 0.0, True) == 0.5
    assert evaluate_setting(setting, "model.layers.1.mlp.up_proj.weight", 1.0, True) == 1.0
    assert evaluate_setting(setting, "model.norm.weight", 0.0, True) == 1.0
    only = [ConditionalParameter(filter="mlp", value=2.0)]
    assert evaluate_setting(only, "model.norm.weight", 0.0, True) is None
    assert evaluate_setting(ConditionalParameter(filter="*", value=3.0), "x", 0.0, True) == 3.0


def test_resolver_precedence_and_layer_fraction() -> None:
    config = _config(
        models=[
            {"model": "a", "parameters": {"density": [0.2, 0.8]}},
            {"model": "b", "parameters": {"weight": 2.0, "density": 0.5}},
            {"model": "base"},  # the base listed among the models is no input of a delta method
        ],
        parameters={"weight": 0.5, "lambda": 0.9, "normalize": False},
    )
    resolver = ParameterResolver(config, num_layers=3)
    assert resolver.inputs == [0, 1]
    params, per_model = resolver.resolve("model.layers.1.mlp.up_proj.weight", 1)
    assert params.lambda_ == pytest.approx(0.9) and params.normalize is False
    assert per_model[0].weight == 0.5 and per_model[0].density == pytest.approx(0.5)  # t = 1/2
    assert per_model[1].weight == 2.0
    _, per_model = resolver.resolve("model.layers.2.mlp.up_proj.weight", 2)
    assert per_model[0].density == pytest.approx(0.8)
    _, per_model = resolver.resolve("model.embed_tokens.weight", None)  # outside blocks: t = 0
    assert per_model[0].density == pytest.approx(0.2)
    assert ParameterResolver(config, num_layers=1).layer_fraction(0) == 1.0


def test_seed_passed_to_methods_that_take_one() -> None:
    config = _config("dare_ties", seed=7)
    params, _ = ParameterResolver(config, 2).resolve("w", None)
    assert params.seed == 7
    params, _ = ParameterResolver(_config("dare_ties", seed=7, parameters={"seed": 3}), 2).resolve("w", None)
    assert params.seed == 3


@pytest.mark.parametrize(
    ("models", "parameters", "message"),
    [
        ([{"model": "a", "parameters": {"weight": 1.0, "density": 1.5}}], None,
         r"models\[0\] \(a\): parameter 'density' = 1.5 for tensor 'w': .*less than or equal to 1"),
        ([{"model": "a", "parameters": {"weight": 1.0, "density": 0.0}}], None, "parameter 'density' = 0.0"),
        ([{"model": "a", "parameters": {"density": 0.5}}], None, r"models\[0\] \(a\): parameter 'weight' is required"),
        ([{"model": "a", "parameters": {"weight": float("nan")}}], None, "parameter 'weight' = nan"),
        ([{"model": "a", "parameters": {"weight": 1.0}}], {"lambda": "big"}, "parameters: parameter 'lambda' = 'big'"),
    ],
)
def test_out_of_range_values_name_parameter_and_model(models, parameters, message) -> None:
    config = _config(models=models, parameters=parameters)
    with pytest.raises(MergelineError, match=message):
        ParameterResolver(config, 2).resolve("w", None)


def test_unknown_parameters_and_method() -> None:
    with pytest.raises(MergelineError, match="parameters: unknown parameter 'densty' for merge_method 'ties'"):
        check_config(_config(parameters={"densty": 0.5}))
    with pytest.raises(MergelineError, match=r"models\[0\] \(a\): unknown per-model parameter 'gama'"):
        check_config(_config(models=[{"model": "a", "parameters": {"weight": 1, "gama": 0.1}}]))
    with pytest.raises(MergelineError, match="unknown merge_method 'tyes'"):
        check_config(_config("tyes"))


def test_another_methods_per_model_parameter_is_ignored_with_one_line() -> None:
    # mergekit configs give ``weight`` to methods that ignore it (slerp, model_stock, …) and mergekit
    # runs them; ties ignores breadcrumbs' ``gamma`` the same way
    two = [{"model": "a", "parameters": {"weight": 0.5, "gamma": 0.1}}, {"model": "b", "parameters": {"weight": 1}}]
    config = _config("model_stock", models=two, parameters={"density": 0.5})
    check_config(config)
    assert ignored_parameters(config) == [
        "parameter 'density' (parameters) is not used by merge_method 'model_stock'; ignored, as mergekit ignores it",
        "parameter 'weight' (models[0], models[1]) is not used by merge_method 'model_stock'; ignored, as mergekit "
        "ignores it",
        "parameter 'gamma' (models[0]) is not used by merge_method 'model_stock'; ignored, as mergekit ignores it",
    ]
    assert ignored_parameters(_config(models=two)) == [
        "parameter 'gamma' (models[0]) is not used by merge_method 'ties'; ignored, as mergekit ignores it"]


def test_method_level_checks() -> None:
    with pytest.raises(MergelineError, match="needs base_model"):
        check_config(MergeConfig.model_validate({"merge_method": "ties", "models": [{"model": "a"}]}))
    with pytest.raises(MergelineError, match="chat_template: 'chatml' is neither 'auto' nor a Jinja template"):
        check_config(_config(tokenizer_source="union", chat_template="chatml"))
    with pytest.raises(MergelineError, match="out_dtype: unsupported dtype 'int4'"):
        check_config(_config(out_dtype="int4"))
    two = [{"model": "a", "parameters": {}}, {"model": "b", "parameters": {}}]
    with pytest.raises(MergelineError, match="slerp' takes 1..2 model"):
        check_config(_config("slerp", models=two * 2, parameters={"t": 0.5}))


def test_load_merge_config_round_trip(tmp_path: Path) -> None:
    data = {
        "merge_method": "ties", "base_model": "base",
        "models": [{"model": "a", "parameters": {"weight": [{"filter": "mlp", "value": 0.5}, {"value": 1.0}]}}],
        "parameters": {"density": 0.4}, "dtype": "float32", "out_dtype": "bfloat16",
    }
    config = load_merge_config(_write(tmp_path, data))
    assert config.output_dtype() is not None and config.models[0].parameters["weight"][0].filter == "mlp"
    again = load_merge_config(_write(tmp_path, config.to_yaml()))
    assert again == config


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("merge_method: ties\nmodels: [a\n", r"merge\.yaml: unreadable YAML at line \d+"),
        ("- just\n- a list\n", "must be a YAML mapping"),
        ("merge_method: ties\nslices: []\nmodels: []\n", "give exactly one of models: or slices:"),
        ("merge_method: ties\nmodules: {}\n", "modules: not supported"),
        ("merge_method: ties\nmodels: [{model: a}]\ntokenizer: {tokens: {x: {source: {kind: model_token, model: a}}}}\n",
         "a model_token source takes exactly one of token_id and token"),
        ("base_model: b\nmodels: []\n", "merge_method: Field required"),
    ],
)
def test_load_errors_are_one_line(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(MergelineError, match=message) as info:
        load_merge_config(_write(tmp_path, text))
    assert "\n" not in str(info.value)


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(MergelineError, match="cannot read config"):
        load_merge_config(tmp_path / "absent.yaml")


def test_scoped_resolver_three_scopes_and_input_names() -> None:
    """Slices: a source's own parameters, then the slice's, then the global ones (first value wins, a
    filter that matches nothing falls through); per-model filters see each input's own tensor name."""
    from mergeline.merge.config import ScopedResolver
    from mergeline.methods import get_method

    own = {"weight": [ConditionalParameter(filter="layers.7.", value=0.3)], "density": [0.2, 0.6]}
    piece = {"weight": 0.5, "lambda": 0.7}
    glob = {"weight": 0.9, "density": 0.1, "lambda": 0.2, "normalize": True}
    resolver = ScopedResolver.scoped(get_method("ties"), 0, [piece, glob], [[own, piece, glob], [None, piece, glob]],
                                     ["slices[0].sources[0] (a)", "slices[0].sources[1] (b)"])
    params, (a, b) = resolver.resolve("model.layers.2.mlp.up_proj.weight", 2, t=0.5,
                                      input_names=["model.layers.7.mlp.up_proj.weight", "model.layers.2.mlp.up_proj.weight"])
    assert params.lambda_ == 0.7 and params.normalize is True
    assert a.weight == 0.3 and a.density == pytest.approx(0.4)  # filter on a's layer 7; gradient at t = 1/2
    assert b.weight == 0.5 and b.density == 0.1
    _, (a, _) = resolver.resolve("model.layers.2.mlp.up_proj.weight", 2, t=0.0,
                                 input_names=["model.layers.2.mlp.up_proj.weight"] * 2)
    assert a.weight == 0.5 and a.density == pytest.approx(0.2)  # no filter match: the slice's weight
