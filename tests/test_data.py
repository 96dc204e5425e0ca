import json

import datasets
import pytest

from nlp_contrastive.data import loading, train_data
from nlp_contrastive.data.batch import BatchCollator


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_named_set_loads_from_data_dir(data_dir):
    ds = loading.load_split("stsb", "test")
    assert len(ds) == 1379 and {"sentence1", "sentence2", "score"} <= set(ds.column_names)


def test_named_set_missing_offline_says_how_to_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("NLPC_DATA_DIR", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="named set 'stsb' not found .* set NLPC_DATA_DIR"):
        loading.load_split("stsb", "test")


def test_hub_id_offline_is_a_clear_error():
    with pytest.raises(FileNotFoundError, match="HF_HUB_OFFLINE is set"):
        loading.load_split("someone/some-dataset", "train")


def test_local_files_and_roles(tmp_path):
    path = write_jsonl(tmp_path / "pairs.jsonl", [{"q": "a b", "d": "c d", "s": 4.0}, {"q": "e", "d": "f", "s": 1.0}])
    ds = loading.select_roles(loading.load_split(str(path)), {"anchor": "q", "positive": "d", "score": "s"},
                           score_range=[0, 5])
    assert ds.column_names == ["anchor", "positive", "score"]
    assert ds["score"] == pytest.approx([0.8, 0.2])
    csv = tmp_path / "pairs.csv"
    csv.write_text("q,d\nx,y\n")
    assert loading.load_split(str(csv))["q"] == ["x"]


@pytest.mark.parametrize("rows,columns,message", [
    ([{"a": "x", "b": "y"}], {"anchor": "a", "positive": "nope"}, r"column\(s\) \['nope'\].*available columns"),
    ([{"a": "x", "b": "y"}], {"anchr": "a"}, r"unknown role\(s\) \['anchr'\]"),
    ([{"a": "x", "b": ""}], {"anchor": "a", "positive": "b"}, "positive in row 0 is empty"),
    ([{"a": "x", "b": 3}], {"anchor": "a", "positive": "b"}, "holds int64, not text"),
    ([{"a": "x", "s": None}, {"a": "y", "s": 1.0}], {"anchor": "a", "score": "s"}, "score in row 0 is missing"),
    ([{"a": "x", "s": float("nan")}], {"anchor": "a", "score": "s"}, "score in row 0 is NaN"),
    ([{"a": "x", "n": []}], {"anchor": "a", "negatives": "n"}, "negatives in .* is an empty list in every row"),
])
def test_bad_rows_fail_with_one_line(tmp_path, rows, columns, message):
    ds = datasets.Dataset.from_list(rows)
    with pytest.raises(ValueError, match=message) as info:
        loading.select_roles(ds, columns)
    assert "\n" not in str(info.value)


def test_unreadable_and_empty_files(tmp_path):
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(ValueError, match="is empty"):
        loading.load_split(str(tmp_path / "empty.jsonl"))
    (tmp_path / "broken.jsonl").write_text('{"a": "x"}\n{not json\n')
    with pytest.raises(ValueError, match="could not read data file"):
        loading.load_split(str(tmp_path / "broken.jsonl"))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        loading.load_split(str(tmp_path / "missing.jsonl"))
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(ValueError, match="unsupported type"):
        loading.load_split(str(tmp_path / "x.txt"))


def test_filter_and_group_pairs():
    ds = datasets.Dataset.from_list([
        {"s1": "a", "s2": "a+", "label": "entailment"}, {"s1": "a", "s2": "a-", "label": "contradiction"},
        {"s1": "a", "s2": "a~", "label": "neutral"}, {"s1": "b", "s2": "b+", "label": "entailment"},
    ])
    assert len(loading.filter_rows(ds, "label == entailment")) == 2
    triplets = loading.group_pairs(ds, anchor="s1", text="s2", positive_if="label == entailment",
                                negative_if="label == contradiction")
    assert triplets.to_list() == [{"anchor": "a", "positive": "a+", "negative": "a-"}]
    tuples = loading.group_pairs(ds, anchor="s1", text="s2", positive_if="label == entailment",
                              negative_if="label != entailment", as_list=True)
    assert tuples.to_list() == [{"anchor": "a", "positive": "a+", "negatives": ["a-", "a~"]}]
    with pytest.raises(ValueError, match="is not 'column OP value'"):
        loading.filter_rows(ds, "label is good")


def test_build_train_dataset_from_specs(data_dir):
    specs = [{"dataset": "stsb", "filter": "score >= 4", "columns": {"anchor": "sentence1", "positive": "sentence2"}},
             {"dataset": "msrp", "filter": "label == 1", "columns": {"anchor": "sentence1", "positive": "sentence2"}}]
    ds = train_data.build_train_dataset(specs)
    assert ds.column_names == ["anchor", "positive"] and len(ds) > 3000
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['colums'\]"):
        train_data.build_train_dataset([{"dataset": "stsb", "colums": {}}])
    with pytest.raises(ValueError, match="give every source the same roles"):
        train_data.build_train_dataset([specs[0], {"dataset": "stsb", "columns": {"anchor": "sentence1",
                                                                             "positive": "sentence2", "score": "score"}}])


def test_tokenize_once_and_collate(tiny_encoder):
    ds = datasets.Dataset.from_list([{"anchor": "a cat", "positive": "a small cat sits", "negatives": ["dog", "a car"]},
                                     {"anchor": "rain", "positive": "it rains", "negatives": ["sun"]}])
    tokenized = loading.tokenize_roles(ds, tiny_encoder.tokenizer, 16)
    again = loading.tokenize_roles(ds, tiny_encoder.tokenizer, 16)
    assert tokenized["anchor_input_ids"] == again["anchor_input_ids"]
    batch = BatchCollator(0)(tokenized.to_list())
    assert batch["features"]["positive"]["input_ids"].shape[0] == 2
    assert batch["features"]["negatives"]["input_ids"].shape[0] == 3
    assert batch["negatives_index"].tolist() == [[0, 1], [2, -1]]
    assert batch["features"]["anchor"]["attention_mask"].sum().item() == sum(len(x) for x in tokenized["anchor_input_ids"])
