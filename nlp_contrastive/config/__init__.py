"""Recipes: YAML (flat or sectioned) + `--key value` overrides -> checked dataclasses, before any model loads.

    schema.py       the dataclasses (ModelConfig, DataConfig, LossConfig, EvalConfig, TrainingArguments, Recipe)
    value_types.py  what a recipe value may be, per field type
    checks.py       every recipe check that needs no model and no data
    recipe.py       load_recipe: YAML + overrides -> Recipe; the resolved recipe and derived numbers printed at start
    variables.py    `vars:` and `${name}` references in recipe values
"""

from nlp_contrastive.config.checks import check_output_dir
from nlp_contrastive.config.recipe import (
    derived_numbers,
    describe_loss,
    load_recipe,
    parse_overrides,
    plain_values,
    print_resolved,
    recipe_as_dict,
)
from nlp_contrastive.config.schema import (
    ContrastiveTrainingArguments,
    DataConfig,
    EvalConfig,
    LossConfig,
    ModelConfig,
    Recipe,
    TrainingArguments,
)

__all__ = ["ContrastiveTrainingArguments", "DataConfig", "EvalConfig", "LossConfig", "ModelConfig", "Recipe",
           "TrainingArguments", "check_output_dir", "derived_numbers", "describe_loss", "load_recipe",
           "parse_overrides", "plain_values", "print_resolved", "recipe_as_dict"]
