import pytest

from nlp_contrastive.config import load_recipe, parse_overrides, plain_values


def write(tmp_path, text):
    path = tmp_path / "r.yaml"
    path.write_text(text)
    return str(path)


def test_sectioned_and_flat_recipes_with_overrides(tmp_path):
    recipe = load_recipe(write(tmp_path, "model:\n  pooling: cls\ntraining:\n  output_dir: o\n  learning_rate: 1e-5\n"
                                         "loss: info_nce\n"), ["--learning_rate", "3e-5", "--use_cpu", "--bf16", "--seed=7"])
    assert recipe.model.pooling == "cls" and recipe.loss.loss == "info_nce"
    assert recipe.training.learning_rate == 3e-5 and recipe.training.bf16 is True and recipe.training.seed == 7


def test_unknown_key_lists_valid_keys(tmp_path):
    with pytest.raises(ValueError, match=r"recipe: unknown key\(s\) \['learnin_rate'\] \(did you mean learning_rate.*valid keys are"):
        load_recipe(write(tmp_path, "learnin_rate: 1e-5\n"))


def test_wrong_type(tmp_path):
    with pytest.raises(ValueError, match="recipe key 'per_device_train_batch_size' must be int, got 'sixteen'"):
        load_recipe(write(tmp_path, "per_device_train_batch_size: sixteen\n"))
    with pytest.raises(ValueError, match="recipe key 'train_data' must be list"):
        load_recipe(None, ["--train_data", "stsb"])


def test_missing_recipe_and_bad_yaml(tmp_path):
    with pytest.raises(FileNotFoundError, match="recipe 'nope.yaml' does not exist"):
        load_recipe("nope.yaml")
    with pytest.raises(ValueError, match="not valid YAML"):
        load_recipe(write(tmp_path, "a: [1,\n"))
    with pytest.raises(ValueError, match="set twice"):
        load_recipe(write(tmp_path, "seed: 1\ntraining:\n  seed: 2\n"))


def test_override_syntax():
    assert parse_overrides(["--a", "1", "--b=x", "--c"]) == {"a": 1, "b": "x", "c": True}
    assert parse_overrides(["--eval_strategy", "no", "--bf16", "false"]) == {"eval_strategy": "no", "bf16": False}
    with pytest.raises(ValueError, match="unexpected argument 'x'"):
        parse_overrides(["x"])


def test_bf16_recipe_runs_on_a_cpu_only_machine(tmp_path):
    recipe = load_recipe(write(tmp_path, "bf16: true\noutput_dir: o\n"))
    assert recipe.training.bf16 is True
    import torch

    if not torch.cuda.is_available():
        assert recipe.training.use_cpu is True


def test_plain_values_makes_yaml_friendly_data_and_redacts_only_when_asked():
    from pathlib import Path

    value = {"model": {"name": Path("/m"), "dims": (64, 32)}, 1: None,
             "training": {"hub_token": "hf_x", "push_token": None, "max_tokens": 5,
                          "nested": [{"DB_PASSWORD": "pw", "api_key": "k", "tokenizer": "t"}]}}
    assert plain_values(value) == {
        "model": {"name": "/m", "dims": [64, 32]}, "1": None,
        "training": {"hub_token": "hf_x", "push_token": None, "max_tokens": 5,
                     "nested": [{"DB_PASSWORD": "pw", "api_key": "k", "tokenizer": "t"}]}}
    assert plain_values(value, redact=True)["training"] == {
        "hub_token": "<redacted>", "push_token": None, "max_tokens": 5,  # unset secrets stay visible as unset
        "nested": [{"DB_PASSWORD": "<redacted>", "api_key": "<redacted>", "tokenizer": "t"}]}
