"""Recipe variables: a top-level `vars: {name: value}` and `${name}` in any string value of the recipe.

One key names what several places share (a BEIR folder read by train_data, eval_tasks and final_eval_tasks), so
the same recipe runs on another folder with `--vars.dataset path/to/folder`. References are replaced after the
command-line overrides are applied (an override may use them too); a value that is exactly `${name}` takes the
variable's value as it is (a number stays a number), a reference inside a longer string is replaced by its text.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

VARS_KEY = "vars"
OVERRIDE_PREFIX = "vars."
_REFERENCE = re.compile(r"\$\{([^}]*)\}")


def check_vars(raw: Any, source: str) -> dict[str, str | int | float]:
    """The recipe's `vars` mapping, checked: names are identifiers, values strings or numbers."""
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise ValueError(f"{VARS_KEY} in {source} must map names to strings or numbers, e.g. "
                         "vars: {dataset: outputs/scifact-split}")
    out = {}
    for name, value in raw.items():
        if not isinstance(name, str) or not name.isidentifier():
            raise ValueError(f"{VARS_KEY} in {source}: variable name {name!r} must be a word (letters, digits, _)")
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise ValueError(f"{VARS_KEY} in {source}: variable '{name}' must be a string or a number, got {value!r}: "
                             "quote it")
        if isinstance(value, str) and _REFERENCE.search(value):
            raise ValueError(f"{VARS_KEY} in {source}: variable '{name}' refers to another variable ({value!r}): "
                             "write its value out")
        out[name] = value
    return out


def split_var_overrides(overrides: dict[str, Any], declared: Mapping[str, Any]) -> dict[str, Any]:
    """Take the `--vars.NAME VALUE` entries out of the parsed overrides (in place); each must name a declared
    variable (a typo would otherwise be silently ignored)."""
    given = {key[len(OVERRIDE_PREFIX):]: overrides.pop(key) for key in list(overrides)
             if key.startswith(OVERRIDE_PREFIX)}
    unknown = sorted(set(given) - set(declared))
    if unknown:
        known = ", ".join(sorted(declared)) or "none"
        raise ValueError(f"--vars.{unknown[0]}: the recipe declares no variable '{unknown[0]}' (declared: {known}): "
                         f"add it under {VARS_KEY}: in the recipe, or fix the name")
    return given


def substitute(value: Any, variables: Mapping[str, Any], where: str) -> Any:
    """`value` (any YAML value) with every `${name}` in its strings replaced; an unknown name is an error."""
    if isinstance(value, str):
        whole = _REFERENCE.fullmatch(value)
        if whole:
            return _lookup(whole.group(1), variables, where)
        return _REFERENCE.sub(lambda m: str(_lookup(m.group(1), variables, where)), value)
    if isinstance(value, Mapping):
        return {k: substitute(v, variables, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [substitute(v, variables, f"{where}[{i}]") for i, v in enumerate(value)]
    return value


def _lookup(name: str, variables: Mapping[str, Any], where: str) -> Any:
    if name not in variables:
        known = ", ".join(sorted(variables)) or "none"
        raise ValueError(f"recipe key '{where}' refers to unknown variable ${{{name}}} (declared: {known}): add "
                         f"{VARS_KEY}: {{{name}: ...}} to the recipe or pass --vars.{name} VALUE")
    return variables[name]


def apply_variables(values: dict[str, Any], declared: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict:
    """The recipe's variables after `--vars.NAME` overrides (checked as the file's), substituted into `values`
    (in place); returns the variables used."""
    variables = {**declared, **check_vars(dict(overrides), "the command line")}
    for key in list(values):
        values[key] = substitute(values[key], variables, key)
    return variables
