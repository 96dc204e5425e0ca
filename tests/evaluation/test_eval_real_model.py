"""The acceptance numbers: bundled all-MiniLM-L6-v2 through the CLI, as MTEB / sentence-transformers give them."""

from __future__ import annotations

import json

import pytest

from nlp_contrastive.cli import main


@pytest.mark.slow
def test_minilm_sts_matches_mteb(tmp_path, minilm_path, data_dir, capsys):
    out = tmp_path / "results.json"
    assert main(["eval", "--model", minilm_path, "--tasks", "STSBenchmark", "SICK-R", "--output", str(out)]) == 0
    results = json.loads(out.read_text())
    assert results["STSBenchmark"]["spearman_cosine"] == pytest.approx(0.8203, abs=1e-4)
    assert results["SICK-R"]["spearman_cosine"] == pytest.approx(0.7715, abs=1e-4)
    assert "82.03" in capsys.readouterr().out
