"""Retrieval / ranking metrics as an `evaluate` metric, with trec_eval (pytrec_eval) definitions.

One example per query: the ranked run for that query and its relevance judgments.

    import evaluate
    retrieval = evaluate.load("eval/metrics/retrieval")             # a local path: works offline
    retrieval.compute(
        predictions=[{"doc_ids": ["d3", "d1", "d7"], "scores": [0.9, 0.8, 0.1]}],
        references=[{"doc_ids": ["d1"], "relevance": [1]}],
    )
    # {'ndcg_at_10': 0.63..., 'mrr_at_10': 0.5, 'map_at_100': 0.5, 'recall_at_1': 0.0, ...}

Ranking is by score (ties: document id descending, as trec_eval); relevant means relevance >= 1; nDCG
uses the relevance value as gain; MAP@k and Recall@k divide by all relevant documents of the query;
queries whose references are empty are not scored. `cutoffs={"ndcg": [10], "precision": [5]}` picks
other metrics/k. The math is nlp_contrastive.evaluation.ranking_metrics (needs nlp-contrastive installed),
the same code `nlp-contrastive eval` uses.
"""

import datasets
import evaluate

from nlp_contrastive.evaluation.ranking_metrics import DEFAULT_CUTOFFS, ranking_metrics

_DESCRIPTION = "nDCG@10, MRR@10, MAP@100 and Recall@1/10/100 of ranked runs against relevance judgments."
_KWARGS_DESCRIPTION = """
Args:
    predictions (list of dict): per query, {"doc_ids": [...], "scores": [...]} (any order; ranked by score).
    references (list of dict): per query, {"doc_ids": [...], "relevance": [...]} with integer relevance.
    cutoffs (dict, optional): metric -> list of k, metrics among ndcg, mrr, map, recall, precision.
Returns:
    dict of mean per-query metrics, keys like ndcg_at_10 (fractions in [0, 1]).
"""
_CITATION = """@inproceedings{vangysel2018pytreceval, title={Pytrec\\_eval: An Extremely Fast Python Interface to
trec\\_eval}, author={Van Gysel, Christophe and de Rijke, Maarten}, booktitle={SIGIR}, year={2018}}"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Retrieval(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({
                "predictions": {"doc_ids": datasets.Sequence(datasets.Value("string")),
                                "scores": datasets.Sequence(datasets.Value("float64"))},
                "references": {"doc_ids": datasets.Sequence(datasets.Value("string")),
                               "relevance": datasets.Sequence(datasets.Value("int64"))},
            }),
        )

    def _compute(self, predictions, references, cutoffs=None):
        run, qrels = {}, {}
        for i, (ranked, judged) in enumerate(zip(predictions, references, strict=True)):
            run[str(i)] = _as_dict(ranked["doc_ids"], ranked["scores"], i, "predictions", "scores")
            if judged["doc_ids"]:
                qrels[str(i)] = _as_dict(judged["doc_ids"], judged["relevance"], i, "references", "relevance")
        return ranking_metrics(run, qrels, cutoffs or DEFAULT_CUTOFFS)


def _as_dict(ids, values, row, what, value_name):
    if len(ids) != len(values):
        raise ValueError(f"retrieval: {what}[{row}] has {len(ids)} doc_ids but {len(values)} {value_name}: give "
                         "one value per document")
    if len(set(ids)) != len(ids):
        raise ValueError(f"retrieval: {what}[{row}] lists a document twice: give each doc id once per query")
    return dict(zip(ids, values, strict=True))
