"""Hard-negative mining: filters on hand-built embeddings, the CLI on bad input, bounded memory, BEIR loading."""

from __future__ import annotations

import json
import math
import tracemalloc
import zlib

import numpy as np
import pytest

from nlp_contrastive import cli
from nlp_contrastive.retrieval.mining import (
    MiningOptions,
    RetrievalPositives,
    load_positives,
    mine_hard_negatives,
    mined_rows,
    write_rows,
)


def _at(cosine: float) -> list[float]:
    """A 2-d unit vector whose cosine with the query [1, 0] is `cosine`."""
    return [cosine, math.sqrt(1 - cosine * cosine)]


class TableEncoder:
    """`encode` looks texts up in a table of hand-written embeddings."""

    def __init__(self, table):
        self.table = {t: np.asarray(v, dtype=np.float32) for t, v in table.items()}

    def encode(self, texts, batch_size=32, convert_to="numpy"):
        return np.stack([self.table[t] for t in texts])


# Query "q" = [1, 0]; document texts named by their cosine with it. "pos" (0.90) is the known positive.
SCORES = {"above": 0.95, "pos": 0.90, "n88": 0.88, "n86": 0.86, "n80": 0.80, "n70": 0.70, "n50": 0.50,
          "n30": 0.30}
ENCODER = TableEncoder({"q": [1, 0], **{t: _at(c) for t, c in SCORES.items()}})
DATA = RetrievalPositives({"q1": "q"}, {f"id-{t}": t for t in SCORES}, {"q1": ["id-pos"]})


def _mine(data=DATA, encoder=ENCODER, **options):
    mined, stats = mine_hard_negatives(encoder, data, MiningOptions(**options), show_progress=False)
    return {m.query_id: m for m in mined}, stats


def test_top_without_filters_takes_the_best_non_positives():
    mined, stats = _mine(num_negatives=3, range_max=10)
    assert mined["q1"].negatives == ["above", "n88", "n86"]
    assert mined["q1"].negative_ids == ["id-above", "id-n88", "id-n86"]
    np.testing.assert_allclose(mined["q1"].negative_scores, [0.95, 0.88, 0.86], atol=1e-6)
    assert mined["q1"].positive_scores == pytest.approx([0.90], abs=1e-6)
    assert stats.removed["positive_id"] == 1 and stats.candidates_seen == 8


def test_relative_margin_is_nv_retriever_topk_percpos():
    # keep score <= 0.9 - 0.05 * 0.9 = 0.855: 0.95, 0.88, 0.86 are dropped
    mined, stats = _mine(num_negatives=3, range_max=10, relative_margin=0.05)
    assert mined["q1"].negatives == ["n80", "n70", "n50"]
    assert stats.removed["relative_margin"] == 3


def test_absolute_margin_and_score_bounds():
    mined, stats = _mine(num_negatives=2, range_max=10, absolute_margin=0.15)  # keep <= 0.75
    assert mined["q1"].negatives == ["n70", "n50"] and stats.removed["absolute_margin"] == 4
    mined, stats = _mine(num_negatives=5, range_max=10, max_score=0.85, min_score=0.6)
    assert mined["q1"].negatives == ["n80", "n70"]
    assert stats.removed["max_score"] == 3 and stats.removed["min_score"] == 2
    assert stats.negatives_per_query == [2]  # fewer than asked: reported, not padded


def test_rank_window_skips_the_top_non_positives():
    mined, stats = _mine(num_negatives=2, range_min=2, range_max=4)
    assert mined["q1"].negatives == ["n86", "n80"]  # ranks 2, 3 of above, n88, n86, n80, ...
    # ST fetches range_max + 1 positive + 1 = 6 candidates: above, pos, n88, n86, n80, n70; n70 is rank 4
    assert stats.removed["rank_window"] == 3 and stats.candidates_seen == 6


def test_range_min_skips_survivors_of_the_margin_not_raw_candidates():
    """sentence-transformers applies the margin first, then skips range_min of what is left."""
    mined, stats = _mine(num_negatives=2, range_min=1, range_max=6, relative_margin=0.05)  # keep <= 0.855
    assert mined["q1"].negatives == ["n70", "n50"]  # survivors n80, n70, n50: n80 skipped
    assert stats.removed["relative_margin"] == 3 and stats.removed["rank_window"] == 1


def test_random_sampling_is_seeded_inside_the_window():
    window = ["above", "n88", "n86", "n80", "n70", "n50"]
    draws = {}
    for seed in range(8):
        mined, _ = _mine(num_negatives=3, range_max=6, sampling="random", seed=seed)
        negatives = mined["q1"].negatives
        assert set(negatives) <= set(window) and len(set(negatives)) == 3
        assert negatives == sorted(negatives, key=window.index)  # best first
        assert negatives == _mine(num_negatives=3, range_max=6, sampling="random", seed=seed)[0]["q1"].negatives
        draws[seed] = tuple(negatives)
    assert len(set(draws.values())) > 1


def test_several_positives_are_all_excluded_and_the_window_stays_full():
    data = RetrievalPositives({"q1": "q"}, DATA.corpus, {"q1": ["id-above", "id-pos", "id-n88"]})
    mined, stats = _mine(data, num_negatives=3, range_max=3)
    assert mined["q1"].negatives == ["n86", "n80", "n70"]  # depth = range_max + 3 positives
    assert stats.removed["positive_id"] == 3
    # margins use the query's lowest-scoring positive (0.88): keep <= 0.88 - 0.044 = 0.836
    mined, _ = _mine(data, num_negatives=2, range_max=5, relative_margin=0.05)
    assert mined["q1"].negatives == ["n80", "n70"]
    rows = mined_rows(mined.values())
    assert [r["positive"] for r in rows] == ["above", "pos", "n88"]
    for row in rows:  # every row of the query carries all its positives, and none of them as a negative
        assert row["known_positives"] == ["above", "pos", "n88"]
        assert not set(row["negatives"]) & set(row["known_positives"])


def test_duplicate_texts_are_collapsed_and_a_positive_text_under_another_id_is_excluded():
    corpus = {**{f"id-{t}": t for t in SCORES}, "copy-of-pos": "pos", "copy-of-n88": "n88"}
    corpus = {"copy-of-pos": "pos", **corpus}  # the copy comes first: the positive's text under another id
    data = RetrievalPositives({"q1": "q"}, corpus, {"q1": ["id-pos"]})
    mined, stats = _mine(data, num_negatives=3, range_max=10)
    assert mined["q1"].negatives == ["above", "n88", "n86"]  # n88 once, pos never
    assert stats.duplicate_documents_collapsed == 2
    assert stats.removed["positive_text"] == 1 and stats.removed["positive_id"] == 0


def test_num_negatives_larger_than_the_range_fails_in_one_line():
    with pytest.raises(ValueError, match=r"num_negatives=5 exceeds the rank range \[2, 4\) of 2 candidates"):
        MiningOptions(num_negatives=5, range_min=2, range_max=4)


def test_triplets_and_parquet_output(tmp_path):
    mined, _ = _mine(num_negatives=2, range_max=10)
    triplets = mined_rows(mined.values(), "triplets")
    assert triplets == [{"query_id": "q1", "query": "q", "positive": "pos", "negative": n} for n in ("above", "n88")]
    import datasets

    path = write_rows(tmp_path / "mined.parquet", mined_rows(mined.values()))
    ds = datasets.Dataset.from_parquet(str(path))
    assert ds[0]["negatives"] == ["above", "n88"] and ds[0]["positive_score"] == pytest.approx(0.9, abs=1e-6)
    assert not list(tmp_path.glob(".*tmp"))  # the temp file was renamed


# ------------------------------------------------------------------------------------------ BEIR + CLI
def _beir(root, qrels: str, *, corpus_rows=None, query_rows=None, line_end="\n"):
    root.mkdir(parents=True, exist_ok=True)
    corpus_rows = corpus_rows if corpus_rows is not None else [
        {"_id": f"d{i}", "title": f"T{i}", "text": f"document number {i}"} for i in range(12)]
    query_rows = query_rows if query_rows is not None else [
        {"_id": str(i), "text": f"question {i}"} for i in range(3)]
    (root / "corpus.jsonl").write_text("".join(json.dumps(r) + "\n" for r in corpus_rows))
    (root / "queries.jsonl").write_text("".join(json.dumps(r) + "\n" for r in query_rows))
    (root / "qrels").mkdir(exist_ok=True)
    lines = ["query-id\tcorpus-id\tscore", *qrels.strip().splitlines()]
    (root / "qrels" / "train.tsv").write_bytes("".join(line + line_end for line in lines).encode())
    return root


QRELS = "0\td1\t1\n0\td2\t1\n1\td3\t1\n1\td4\t0\n2\td5\t2"


def test_beir_loader_reads_crlf_and_lf_qrels_alike(tmp_path):
    crlf = load_positives(_beir(tmp_path / "crlf", QRELS, line_end="\r\n"), "train")
    lf = load_positives(_beir(tmp_path / "lf", QRELS), "train")
    assert crlf.positives == lf.positives == {"0": ["d1", "d2"], "1": ["d3"], "2": ["d5"]}  # rel 0 is no positive
    assert crlf.corpus.text_of(crlf.corpus.rows_of_ids(["d1"])) == {1: "T1 document number 1"}  # title + " " + text, as MTEB
    assert b"\r\n" in (tmp_path / "crlf" / "qrels" / "train.tsv").read_bytes()


def _run_cli(args, capsys):
    code = cli.main(["mine", *args])
    return code, capsys.readouterr().err


@pytest.mark.parametrize("case, message", [
    ("unknown_doc", r"qrels name 1 document id\(s\) that are not in the corpus \(e.g. 'd99'\)"),
    ("unknown_query", r"qrels name 1 query id\(s\) that are not in the queries \(e.g. '7'\)"),
    ("empty_corpus", r"corpus.jsonl is empty"),
    ("blank_corpus", r"corpus.jsonl holds no documents"),
    ("query_without_text", r"query '1' has no text"),
    ("too_many_negatives", r"num_negatives=9 exceeds the rank range \[0, 5\)"),
    ("missing_data", r"--data '.*nowhere' does not exist"),
])
def test_cli_bad_input_exits_2_with_one_line(tmp_path, capsys, case, message):
    """Every check runs before the model loads (the model path here does not even exist)."""
    folder, extra = tmp_path / "beir", []
    if case == "unknown_doc":
        _beir(folder, QRELS + "\n2\td99\t1")
    elif case == "unknown_query":
        _beir(folder, QRELS + "\n7\td1\t1")
    elif case == "empty_corpus":
        _beir(folder, QRELS, corpus_rows=[])
    elif case == "blank_corpus":
        _beir(folder, QRELS, corpus_rows=[])
        (folder / "corpus.jsonl").write_text("\n\n")
    elif case == "query_without_text":
        _beir(folder, QRELS, query_rows=[{"_id": "0", "text": "a"}, {"_id": "1", "text": "  "},
                                         {"_id": "2", "text": "c"}])
    elif case == "too_many_negatives":
        _beir(folder, QRELS)
        extra = ["--num-negatives", "9", "--range-max", "5"]
    else:
        folder = tmp_path / "nowhere"
    code, err = _run_cli(["--model", str(tmp_path / "no-model"), "--data", str(folder), "--output", str(tmp_path / "o.jsonl"),
                          *extra], capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("nlp-contrastive mine: error: "), err
    assert __import__("re").search(message, lines[0]), lines[0]
    assert not (tmp_path / "o.jsonl").exists()


def test_cli_mines_a_beir_folder_into_a_train_data_source(tmp_path, capsys, tiny_model_dir):
    folder = _beir(tmp_path / "beir", QRELS, line_end="\r\n")
    out = tmp_path / "mined.jsonl"
    code, err = _run_cli(["--model", str(tiny_model_dir), "--data", str(folder), "--output", str(out),
                          "--num-negatives", "3", "--range-min", "1", "--range-max", "6", "--sampling", "random",
                          "--query-prompt", "query: "], capsys)
    assert code == 0, err
    # depth = range_max + the most positives of a query (2) + 1, as sentence-transformers: 3 queries x 9 candidates
    assert "candidates seen: 27" in err and "removed by positive_id:" in err
    assert "negatives per query: mean 3.00" in err and "mean positive score" in err
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["query_id"] for r in rows] == ["0", "0", "1", "2"]
    assert {"query", "positive", "negatives", "negative_scores", "positive_score", "known_positives"} <= set(rows[0])
    for row in rows:
        assert len(row["negatives"]) == 3 and not set(row["negatives"]) & set(row["known_positives"])
        assert row["negative_scores"] == sorted(row["negative_scores"], reverse=True)
    from nlp_contrastive.data.train_data import build_train_dataset

    ds = build_train_dataset([{"dataset": str(out), "columns": {"anchor": "query", "positive": "positive",
                                                                 "negatives": "negatives"}}])
    assert ds.column_names == ["anchor", "positive", "negatives"] and len(ds) == 4


# ------------------------------------------------------------------------------------------ memory
class RandomEncoder:
    """Unit-free random embeddings, a deterministic function of the texts (no table held)."""

    def __init__(self, dim: int) -> None:
        self.dim = dim

    def encode(self, texts, batch_size=32, convert_to="numpy"):
        rng = np.random.default_rng(zlib.crc32("".join(texts[:2]).encode()))
        return rng.standard_normal((len(texts), self.dim), dtype=np.float32)


def _peak_extra_bytes(num_documents: int, dim: int = 384) -> int:
    corpus = {f"d{i}": f"doc {i}" for i in range(num_documents)}
    data = RetrievalPositives({f"q{i}": f"query {i}" for i in range(64)}, corpus,
                              {f"q{i}": [f"d{7 * i}", f"d{7 * i + 1}"] for i in range(64)})
    tracemalloc.start()
    try:
        mined, _ = mine_hard_negatives(RandomEncoder(dim), data, MiningOptions(num_negatives=5, range_max=30,
                                       corpus_chunk_size=8192), show_progress=False)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert all(len(m.negatives) == 5 for m in mined)
    return peak


def test_exact_mining_memory_is_bounded_on_a_200k_corpus():
    small, large = _peak_extra_bytes(20_000), _peak_extra_bytes(200_000)
    chunk = 8192 * 384 * 4  # 12.6 MB: one chunk of corpus embeddings
    all_embeddings = 200_000 * 384 * 4  # 307 MB: what holding the corpus embeddings would cost
    # The peak is a few copies of one chunk (encoder output, normalised copy, scores); the growth with the corpus
    # is the O(corpus) text -> slot bookkeeping (dicts of 200k entries): at most ~40 MB for 180k more
    # documents, against +276 MB if the embeddings were held.
    assert small < 6 * chunk, small
    assert large - small < 40e6, (small, large)
    assert large < 0.3 * all_embeddings, (small, large)


def test_a_faiss_index_mines_the_same_negatives_on_a_small_corpus():
    pytest.importorskip("faiss", reason="faiss is not installed (pip install faiss-cpu): exact search only")
    from nlp_contrastive.retrieval.search import IndexOptions

    options = {"num_negatives": 4, "range_min": 1, "range_max": 6, "relative_margin": 0.01}
    exact, _ = _mine(**options)
    hnsw, _ = _mine(**options, index=IndexOptions(index="hnsw"))
    assert hnsw["q1"].negatives == exact["q1"].negatives == ["n86", "n80", "n70", "n50"]


def test_mined_file_trains_through_the_scifact_recipe(tmp_path, capsys, tiny_model_dir):
    """recipes/scifact-hardneg.yaml on a mined file, through the train entry point (tiny model, tiny data)."""
    from pathlib import Path

    import yaml

    from nlp_contrastive.train import main as train_main

    corpus = [{"_id": f"d{i}", "title": "", "text": f"abstract {i} about topic {i % 5}"} for i in range(30)]
    queries = [{"_id": str(i), "text": f"claim {i} on topic {i % 5}"} for i in range(10)]
    qrels = "\n".join(f"{i}\td{i}\t1" for i in range(10)) + "\n0\td10\t1"  # query 0 has two positives
    folder = _beir(tmp_path / "beir", qrels, corpus_rows=corpus, query_rows=queries, line_end="\r\n")
    mined = tmp_path / "mined.jsonl"
    code, err = _run_cli(["--model", str(tiny_model_dir), "--data", str(folder), "--output", str(mined),
                          "--num-negatives", "2", "--range-max", "8"], capsys)
    assert code == 0, err
    recipe = yaml.safe_load((Path(__file__).parents[1] / "recipes" / "scifact-hardneg.yaml").read_text())
    source = recipe["data"]["train_data"][0]
    assert source["columns"]["known_positives"] == "known_positives"
    source["dataset"] = str(mined)
    for key in ("mine", "split"):  # the recipe mines in the run (tests/retrieval/test_recipe_mining.py); here: a file
        source.pop(key)
    recipe["model"].update(model_name_or_path=str(tiny_model_dir), max_seq_length=32)
    recipe["eval"].update(eval_tasks=[], final_eval_tasks=[])
    recipe["training"].update(output_dir=str(tmp_path / "out"), num_train_epochs=1, per_device_train_batch_size=4,
                              eval_strategy="no", save_strategy="no", load_best_model_at_end=False)
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    assert train_main([str(path)]) == 0
    run = json.loads((tmp_path / "out" / "training_run.json").read_text())
    assert (tmp_path / "out" / "model.safetensors").is_file() and (tmp_path / "out" / "modules.json").is_file()
    assert run["train_rows"] == 11 and run["loss"]["name"] == "InfoNCELoss"
    assert math.isfinite(run["final_train_loss"])


def test_pairs_file_groups_the_positives_of_a_query(tmp_path):
    rows = [{"q": "claim a", "doc": "abs 1"}, {"q": "claim b", "doc": "abs 2"}, {"q": "claim a", "doc": "abs 3"},
            {"q": "claim c", "doc": "abs 2"}]
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    data = load_positives(path, "train", query_column="q", positive_column="doc")
    assert sorted(data.corpus.values()) == ["abs 1", "abs 2", "abs 3"]  # distinct positives
    by_text = {data.queries[q]: sorted(data.corpus[d] for d in docs) for q, docs in data.positives.items()}
    assert by_text == {"claim a": ["abs 1", "abs 3"], "claim b": ["abs 2"], "claim c": ["abs 2"]}
    with pytest.raises(ValueError, match=r"no column\(s\) \['query', 'positive'\] \(columns: q, doc\)"):
        load_positives(path, "train")


def test_a_query_whose_candidates_all_fail_the_filters_keeps_its_rows_without_negatives():
    """The base model ranks the positive below every candidate: nothing passes a 50% relative margin, but the
    query still trains (in-batch negatives); triplets have nothing to write for it."""
    mined, stats = _mine(num_negatives=2, range_max=3, relative_margin=0.5)
    assert mined["q1"].negatives == [] and stats.negatives_per_query == [0]
    rows = mined_rows(list(mined.values()))
    assert [(r["query"], r["positive"], r["negatives"], r["known_positives"]) for r in rows] == \
        [("q", "pos", [], ["pos"])]
    assert mined_rows(list(mined.values()), "triplets") == []
    assert "(1 none: kept with in-batch negatives only)" in stats.summary(2)


# ------------------------------------------------------------------------------------------ vs sentence-transformers
def _paraphrases(data_dir, count: int) -> list[tuple[str, str]]:
    rows = [json.loads(line) for line in (data_dir / "msrp" / "test.jsonl").read_text().splitlines()]
    pairs = [(r["sentence1"], r["sentence2"]) for r in rows if r["label"] == 1][:count]
    return [p for a, b in pairs for p in ((a, b), (b, a))]  # both directions: each query is another's positive


@pytest.mark.parametrize("options", [
    {"num_negatives": 3, "range_max": 10},
    {"num_negatives": 2, "range_min": 2, "range_max": 12, "relative_margin": 0.05},
    {"num_negatives": 2, "range_min": 1, "range_max": 8, "absolute_margin": 0.02, "max_score": 0.9},
])
def test_same_negatives_as_sentence_transformers_on_paraphrases_in_both_directions(tmp_path, data_dir, minilm_path,
                                                                                   options):
    """The self-negative case: every query's text is in the corpus (as the positive of the reverse pair). ST
    removes it; so must we. range_min counts survivors of the margins, as in ST. Both sides embed with the same
    SentenceTransformer, so only the selection is compared."""
    import datasets
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.util import mine_hard_negatives as st_mine

    pairs = _paraphrases(data_dir, 80)
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps({"query": q, "positive": p}) + "\n" for q, p in pairs))
    model = SentenceTransformer(minilm_path, device="cpu")
    model.max_seq_length = 64
    mined, stats = mine_hard_negatives(model, load_positives(path, "train"), MiningOptions(**options),
                                       show_progress=False)
    ours = {(m.query, p): m.negatives for m in mined for p in m.positives}
    assert stats.removed["query_text"] > 0.9 * len(pairs)  # nearly every query meets its own text near the top
    assert all(query not in negatives for (query, _), negatives in ours.items())
    ds = datasets.Dataset.from_dict({"query": [q for q, _ in pairs], "positive": [p for _, p in pairs]})
    theirs = st_mine(ds, model, output_format="n-tuple", batch_size=64, verbose=False, **options)
    k = options["num_negatives"]
    assert len(theirs) > 0.5 * len(pairs)
    same = sum(ours[row["query"], row["positive"]] == [row[f"negative_{i}"] for i in range(1, k + 1)]
               for row in theirs)
    assert same == len(theirs)
    # ST keeps only queries with k survivors; ours keeps the rest with fewer (same count of full ones)
    assert sum(len(negatives) == k for negatives in ours.values()) == len(theirs)
