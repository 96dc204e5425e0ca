"""STS correlation as an `evaluate` metric: Pearson and Spearman of predicted similarity vs gold score.

    import evaluate
    sts = evaluate.load("eval/metrics/sts_correlation")          # a local path: works offline
    sts.compute(predictions=[0.91, 0.12, 0.55], references=[4.8, 0.4, 2.5])
    # {'pearson': 0.99..., 'spearman': 1.0}

All pairs are pooled (MTEB's convention); values are fractions in [-1, 1], not x100. The math is
nlp_contrastive.evaluation.sts.correlation_metrics (scipy.stats), so this module and `nlp-contrastive eval`
cannot disagree; it needs nlp-contrastive installed.
"""

import datasets
import evaluate

from nlp_contrastive.evaluation.inputs import check_lengths, check_numbers
from nlp_contrastive.evaluation.sts import correlation_metrics

_DESCRIPTION = "Pearson and Spearman correlation between predicted similarities and gold STS scores, pooled."
_KWARGS_DESCRIPTION = """
Args:
    predictions (list of float): model similarity per pair (e.g. cosine of the two embeddings).
    references (list of float): gold similarity per pair, any scale (e.g. 0-5).
Returns:
    pearson (float), spearman (float): scipy.stats correlations over all pairs.
"""
_CITATION = """@inproceedings{muennighoff2023mteb, title={MTEB: Massive Text Embedding Benchmark},
author={Muennighoff, Niklas and Tazi, Nouamane and Magne, Lo{\\"\\i}c and Reimers, Nils}, booktitle={EACL}, year={2023}}"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class StsCorrelation(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Value("float64"),
                                        "references": datasets.Value("float64")}),
        )

    def _compute(self, predictions, references):
        check_lengths("sts_correlation", predictions=predictions, references=references)
        check_numbers("sts_correlation", "prediction", predictions)
        check_numbers("sts_correlation", "reference", references)
        if len(set(references)) < 2 or len(set(predictions)) < 2:
            raise ValueError("sts_correlation: predictions and references each need at least two distinct values "
                             "(correlation is undefined for a constant)")
        metrics = correlation_metrics(references, {"similarity": predictions})
        return {"pearson": metrics["pearson_similarity"], "spearman": metrics["spearman_similarity"]}
