"""k-nearest-neighbour classification of frozen features (the DINO protocol).

Features are L2-normalised; the similarity is the cosine. Each test feature takes its k most similar training
features and votes with them::

    weighted (DINO, default):  score[c] = sum_{j in top-k, label_j = c} exp(sim_j / T),   T = 0.07
    majority:                  score[c] = #{j in top-k : label_j = c}     (ties: the smallest class index)

and predicts argmax_c score[c]. (DINO's code weights by exp(sim / T) exactly so; the temperature makes close
neighbours dominate.)
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from ..errors import InputError

__all__ = ["knn_predict", "knn_accuracy"]


@torch.no_grad()
def knn_predict(train_features: torch.Tensor, train_labels: torch.Tensor, test_features: torch.Tensor, *,
                num_classes: int, k: int = 20, temperature: float = 0.07, vote: str = "weighted",
                chunk: int = 1024) -> torch.Tensor:
    """Predicted labels (N_test,) of the k-NN classifier above."""
    if vote not in ("weighted", "majority"):
        raise InputError(f"vote must be 'weighted' or 'majority', got {vote!r}")
    if train_features.shape[0] == 0:
        raise InputError("k-NN needs at least one training feature")
    k = min(k, train_features.shape[0])
    bank = F.normalize(train_features.float(), dim=1)
    labels = train_labels.long()
    predictions = []
    for start in range(0, test_features.shape[0], chunk):
        queries = F.normalize(test_features[start:start + chunk].float(), dim=1)
        sim, idx = (queries @ bank.T).topk(k, dim=1)
        weights = (sim / temperature).exp() if vote == "weighted" else torch.ones_like(sim)
        scores = torch.zeros(queries.shape[0], num_classes, dtype=weights.dtype)
        scores.scatter_add_(1, labels[idx], weights)
        predictions.append(scores.argmax(dim=1))
    return torch.cat(predictions) if predictions else torch.zeros(0, dtype=torch.long)


def knn_accuracy(train_features, train_labels, test_features, test_labels, *, num_classes: int, k: int = 20,
                 temperature: float = 0.07, vote: str = "weighted") -> float:
    """Top-1 accuracy in percent."""
    pred = knn_predict(train_features, train_labels, test_features, num_classes=num_classes, k=k,
                       temperature=temperature, vote=vote)
    return 100.0 * (pred == test_labels.long()).float().mean().item()
