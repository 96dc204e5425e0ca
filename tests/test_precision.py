"""Precision follows the hardware: `bf16: auto` from the CPU flags (monkeypatched), printed, recorded, warned."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from nlp_contrastive import precision
from nlp_contrastive.config import load_recipe

AVX2_ONLY = {"fpu", "sse4_2", "avx", "avx2", "fma"}
AVX512_CORE = AVX2_ONLY | {"avx512f", "avx512bw", "avx512vl", "avx512dq"}  # bf16 only emulated here


@pytest.fixture
def cpu_flags(monkeypatch):
    """Pretend to be a CPU with the given flags and no GPU."""
    def use(flags):
        monkeypatch.setattr(precision, "read_cpu_flags", lambda path="/proc/cpuinfo": flags)
        monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    return use


def write(tmp_path, text):
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize("flags,native", [
    (AVX2_ONLY, False), (AVX512_CORE, False), (None, False),
    (AVX512_CORE | {"avx512_bf16"}, True), (AVX512_CORE | {"amx_bf16", "amx_tile"}, True),
    ({"fp", "asimd", "bf16"}, True),  # aarch64 (e.g. Graviton3)
])
def test_native_bf16_comes_from_the_cpu_flags(cpu_flags, flags, native):
    cpu_flags(flags)
    choice = precision.resolve_bf16("auto")
    assert choice.bf16 is native and choice.native_bf16 is native and choice.device == "cpu"
    assert choice.reason.startswith("auto: ")
    assert ("fp32" in choice.reason) is not native


def test_read_cpu_flags_parses_x86_and_arm_cpuinfo(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512_bf16\n\nprocessor\t: 1\nFeatures\t: fp bf16\n")
    assert precision.read_cpu_flags(str(info)) == {"fpu", "avx2", "avx512_bf16", "fp", "bf16"}
    assert precision.read_cpu_flags(str(tmp_path / "missing")) is None


def test_read_cpu_model_gives_the_first_model_name(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nmodel name\t: AMD EPYC\n\nprocessor\t: 1\nmodel name\t: AMD EPYC\n")
    assert precision.read_cpu_model(str(info)) == "AMD EPYC"
    (tmp_path / "arm").write_text("processor\t: 0\nFeatures\t: fp bf16\n")
    assert precision.read_cpu_model(str(tmp_path / "arm")) is None
    assert precision.read_cpu_model(str(tmp_path / "missing")) is None


def test_auto_is_the_default_and_resolves_to_a_bool_with_its_reason(cpu_flags, tmp_path, capsys):
    from nlp_contrastive.config import derived_numbers, print_resolved

    cpu_flags(AVX2_ONLY)
    for text in ("output_dir: o\n", "output_dir: o\nbf16: auto\n"):
        recipe = load_recipe(write(tmp_path, text))
        assert recipe.training.bf16 is False and recipe.precision.requested == "auto"
        assert "avx512_bf16" in recipe.precision.reason
    print_resolved(recipe, derived_numbers(recipe, 10, 1, 0))
    out = capsys.readouterr().out
    assert "precision:" in out and "no avx512_bf16/amx_bf16" in out

    cpu_flags(AVX512_CORE | {"amx_bf16"})
    recipe = load_recipe(write(tmp_path, "output_dir: o\n"), ["--bf16", "auto"])
    assert recipe.training.bf16 is True and recipe.training.use_cpu is True  # transformers needs use_cpu on CPU
    assert load_recipe(write(tmp_path, "output_dir: o\nbf16: false\n")).training.bf16 is False
    assert load_recipe(write(tmp_path, "output_dir: o\nfp16: false\n"), ["--fp16", "true", "--use_cpu", "true"]
                       ).precision.reason.startswith("fp16")


def test_bad_bf16_value_is_a_one_line_error(tmp_path):
    with pytest.raises(ValueError, match="'bf16' must be true, false or auto, got 'fast'"):
        load_recipe(write(tmp_path, "output_dir: o\nbf16: fast\n"))


def test_bf16_true_without_native_support_runs_but_warns_once_with_the_measured_cost(cpu_flags, tmp_path,
                                                                                     monkeypatch):
    cpu_flags(AVX2_ONLY)
    precision._warn_emulated_once.cache_clear()
    monkeypatch.setattr(precision, "measure_cpu_bf16_slowdown", lambda: 17.5)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first = load_recipe(write(tmp_path, "output_dir: o\nbf16: true\n"))
        load_recipe(write(tmp_path, "output_dir: o\nbf16: true\n"))
    emulated = [w for w in caught if "without native bf16" in str(w.message)]
    assert first.training.bf16 is True and len(emulated) == 1
    assert "17.5x slower" in str(emulated[0].message)
    precision._warn_emulated_once.cache_clear()


def test_slowdown_measurement_times_both_precisions():
    assert precision.measure_cpu_bf16_slowdown(size=32, rows=8, repeats=1) > 0


def test_encode_autocasts_only_where_bf16_is_native(cpu_flags, tiny_encoder):
    cpu_flags(AVX2_ONLY)
    with precision.encode_autocast("cpu"):
        assert not torch.is_autocast_enabled("cpu")
    cpu_flags(AVX2_ONLY | {"avx512_bf16"})
    with precision.encode_autocast("cpu"):
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
    fp32 = tiny_encoder.encode(["a short text", "another one"])  # the default: fp32 on every CPU class
    assert np.array_equal(fp32, tiny_encoder.encode(["a short text", "another one"], bf16=False))
    bf16 = tiny_encoder.encode(["a short text", "another one"], bf16=None)  # auto: native here, so bf16
    assert fp32.dtype == bf16.dtype == "float32"
    assert 0 < abs(fp32 - bf16).max() < 0.1  # bf16 really ran, and is close
    cpu_flags(AVX2_ONLY)
    assert np.array_equal(fp32, tiny_encoder.encode(["a short text", "another one"], bf16=None))  # auto: fp32


def test_precision_is_recorded_in_the_run_record_and_the_model_card(cpu_flags, tmp_path):
    from nlp_contrastive.card import build_model_card
    from nlp_contrastive.run_record import RunRecord

    cpu_flags(AVX2_ONLY)
    choice = load_recipe(write(tmp_path, "output_dir: o\n")).precision
    record = RunRecord.from_dict(RunRecord(precision=choice.to_dict(), hardware={"device": "cpu"}).to_dict())
    assert record.precision["bf16"] is False and record.precision["requested"] == "auto"
    card = build_model_card(record, {}, {}, {}, model_id="me/model")
    assert "- Precision: fp32 (auto: CPU (AVX2) has no avx512_bf16/amx_bf16" in card


FP32_RECIPES = {"scifact-hardneg.yaml"}  # settings chosen on dev in fp32 (see its header)


def test_every_shipped_recipe_says_auto_and_trains_fp32_on_an_avx2_cpu(cpu_flags, tmp_path):
    """Recipes say `bf16: auto`; a recipe whose settings were chosen in fp32 may pin `bf16: false` (the same on
    every CPU) — never `true`, which would be slow where bf16 is emulated."""
    from tests.conftest import REPO_ROOT

    cpu_flags(AVX2_ONLY)
    recipes = sorted((REPO_ROOT / "recipes").glob("*.yaml"))
    assert recipes
    shard = tmp_path / "shard-0.jsonl"  # a streamed recipe's shards are written by a command before it runs
    shard.write_text('{"anchor": "a cat", "positive": "a small cat"}\n')
    streamed = ["--train_data", f"[{{dataset: '{shard}', columns: {{anchor: anchor, positive: positive}}, "
                "streaming: true}]"]
    for path in recipes:
        recipe = load_recipe(str(path), streamed if "streaming" in path.name else None)
        pinned_fp32 = path.name in FP32_RECIPES
        assert recipe.precision.requested == ("auto" if not pinned_fp32 else False), path.name
        assert recipe.training.bf16 is False, path.name


def test_results_after_bf16_training_are_the_saved_models_fp32_numbers(tiny_model_dir, tmp_path, data_dir):
    """bf16 training leaves accelerate's autocast wrapper on the live encoder's forward: the final evaluation must
    still run in fp32, i.e. give exactly what evaluating the saved model gives."""
    import json

    from nlp_contrastive.evaluation.suite import load_suite
    from nlp_contrastive.modeling import Encoder
    from nlp_contrastive.train import main
    from tests.conftest import REPO_ROOT
    from tests.test_trainer import tiny_overrides

    task = {"name": "stsb-test", "type": "sts", "dataset": "stsb", "split": "test", "max_rows": 200}
    out = tmp_path / "run"
    assert main([str(REPO_ROOT / "recipes" / "stsb-cosine.yaml"),
                 *tiny_overrides(str(tiny_model_dir), out, "--max_steps", "2", "--learning_rate", "1e-3",
                                 "--bf16", "true", "--final_eval_tasks", json.dumps([task]))]) == 0
    written = json.loads((out / "results.json").read_text())["stsb-test"]
    saved = load_suite({"tasks": [task]})(Encoder.from_pretrained(str(out)))["stsb-test"]
    assert written.keys() == saved.keys()
    for metric in written:  # pearson too: spearman (ranks) can hide a bf16 difference
        assert written[metric] == pytest.approx(saved[metric], abs=1e-7), metric
