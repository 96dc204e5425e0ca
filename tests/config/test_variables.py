"""Recipe variables: `vars:` + `${name}` anywhere in a string value, overridden by `--vars.NAME`, unknown names in
one line, the resolved values (not the references) in what the run records."""

from __future__ import annotations

import pytest

from nlp_contrastive.config import load_recipe, recipe_as_dict

RECIPE = """\
vars: {dataset: data/beir, lr: 3.0e-5, steps: 4}
model:
  model_name_or_path: m
data:
  train_data:
    - {dataset: "${dataset}", split: train, columns: {anchor: query, positive: positive}}
eval:
  eval_tasks: [{name: dev, type: retrieval, layout: beir, dataset: "${dataset}", split: dev}]
  final_eval_tasks: []
loss: {loss: info_nce}
training:
  output_dir: outputs/run-${steps}-steps
  learning_rate: ${lr}
  max_steps: ${steps}
"""


def write(tmp_path, text=RECIPE):
    path = tmp_path / "r.yaml"
    path.write_text(text)
    return str(path)


def test_references_are_replaced_whole_and_inside_strings(tmp_path):
    recipe = load_recipe(write(tmp_path))
    assert recipe.data.train_data[0]["dataset"] == "data/beir"
    assert recipe.eval.eval_tasks[0]["dataset"] == "data/beir"
    assert recipe.training.output_dir == "outputs/run-4-steps"
    assert recipe.training.learning_rate == 3e-5 and recipe.training.max_steps == 4  # numbers stay numbers
    resolved = recipe_as_dict(recipe)
    assert resolved["vars"] == {"dataset": "data/beir", "lr": 3e-5, "steps": 4}
    assert resolved["data"]["train_data"][0]["dataset"] == "data/beir" and "${" not in str(resolved)


def test_command_line_overrides_a_variable_and_may_use_references(tmp_path):
    recipe = load_recipe(write(tmp_path), ["--vars.dataset", "other/folder", "--run_name", "run-${dataset}"])
    assert recipe.data.train_data[0]["dataset"] == "other/folder"
    assert recipe.eval.eval_tasks[0]["dataset"] == "other/folder"
    assert recipe.training.run_name == "run-other/folder"
    assert recipe.variables["dataset"] == "other/folder"


@pytest.mark.parametrize("text,overrides,message", [
    (RECIPE.replace("${lr}", "${rate}"), [], r"'learning_rate' refers to unknown variable \$\{rate\} \(declared: "
                                            r"dataset, lr, steps\): add vars: \{rate: ...\} .* --vars.rate VALUE"),
    (RECIPE, ["--vars.datset", "x"], r"--vars.datset: the recipe declares no variable 'datset'"),
    (RECIPE.replace("steps: 4}", "steps: [4]}"), [], r"variable 'steps' must be a string or a number"),
    (RECIPE.replace("steps: 4}", "steps: true}"), [], r"variable 'steps' must be a string or a number"),
    ("vars: [a]\n", [], r"vars in .* must map names to strings or numbers"),
    (RECIPE, ["--vars.lr", "[1]"], r"variable 'lr' must be a string or a number"),
])
def test_bad_variables_fail_in_one_line(tmp_path, text, overrides, message):
    with pytest.raises(ValueError, match=message) as info:
        load_recipe(write(tmp_path, text), overrides)
    assert "\n" not in str(info.value)


def test_unknown_reference_through_the_train_command_exits_2(tmp_path, capsys):
    from nlp_contrastive.train import main

    assert main([write(tmp_path, RECIPE.replace("${dataset}", "${data_set}"))]) == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 1 and "unknown variable ${data_set}" in errors[0], errors
