"""Contrastive losses as pure functions of embedding tensors, plus thin nn.Modules holding hyperparameters.

Use the functions in any training loop (e.g. a plain `transformers.Trainer.compute_loss`); the modules take
embeddings by role name (`loss(anchor=..., positive=..., negatives=...)`) and are what `ContrastiveTrainer`
and recipes use, looked up by snake-case name in `LOSSES`.
"""

from __future__ import annotations

from nlp_contrastive.losses._common import LossModule
from nlp_contrastive.losses.angle import AnglELoss, angle, angle_similarity
from nlp_contrastive.losses.distillation import (
    MarginMSELoss,
    MSEDistillationLoss,
    margin_mse,
    mse_distillation,
)
from nlp_contrastive.losses.info_nce import InfoNCELoss, info_nce
from nlp_contrastive.losses.log_loss import LogLoss, log_loss
from nlp_contrastive.losses.matryoshka import MatryoshkaLoss, matryoshka, prefix_similarity_loss
from nlp_contrastive.losses.n_tuple import NTupleLoss, n_tuple
from nlp_contrastive.losses.pairwise import (
    ContrastiveLoss,
    CoSENTLoss,
    CosineSimilarityLoss,
    OnlineContrastiveLoss,
    contrastive,
    cosent,
    cosine_similarity_loss,
    online_contrastive,
)
from nlp_contrastive.losses.similarity import (
    DISTANCES,
    SIMILARITIES,
    Measure,
    distance_matrix,
    get_distance,
    get_similarity,
    pairwise_distance,
    pairwise_similarity,
    similarity_matrix,
)
from nlp_contrastive.losses.triplet import (
    BatchAllTripletLoss,
    BatchHardTripletLoss,
    BPRLoss,
    PairwiseHingeLoss,
    TripletLoss,
    batch_all_triplet,
    batch_hard_triplet,
    bpr,
    pairwise_hinge,
    triplet,
)

LOSSES: dict[str, type[LossModule]] = {
    "info_nce": InfoNCELoss,
    "cosine_similarity": CosineSimilarityLoss,
    "cosent": CoSENTLoss,
    "triplet": TripletLoss,
    "batch_hard_triplet": BatchHardTripletLoss,
    "batch_all_triplet": BatchAllTripletLoss,
    "n_tuple": NTupleLoss,
    "contrastive": ContrastiveLoss,
    "online_contrastive": OnlineContrastiveLoss,
    "pairwise_hinge": PairwiseHingeLoss,
    "bpr": BPRLoss,
    "log_loss": LogLoss,
    "angle": AnglELoss,
    "mse_distillation": MSEDistillationLoss,
    "margin_mse": MarginMSELoss,
    "matryoshka": MatryoshkaLoss,
}

__all__ = [
    "DISTANCES", "LOSSES", "SIMILARITIES", "AnglELoss", "BPRLoss", "BatchAllTripletLoss",
    "BatchHardTripletLoss", "CoSENTLoss", "ContrastiveLoss", "CosineSimilarityLoss", "InfoNCELoss", "LogLoss",
    "LossModule", "MSEDistillationLoss", "MarginMSELoss", "MatryoshkaLoss", "Measure", "NTupleLoss",
    "OnlineContrastiveLoss", "PairwiseHingeLoss", "TripletLoss", "angle", "angle_similarity",
    "batch_all_triplet", "batch_hard_triplet", "bpr", "contrastive", "cosent", "cosine_similarity_loss",
    "distance_matrix", "get_distance", "get_similarity", "info_nce", "log_loss", "margin_mse", "matryoshka",
    "mse_distillation", "n_tuple", "online_contrastive", "pairwise_distance", "pairwise_hinge",
    "pairwise_similarity", "prefix_similarity_loss", "similarity_matrix", "triplet",
]
