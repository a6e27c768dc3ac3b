"""A new classification head on a model's frozen embeddings: fitted in seconds on a CPU, scored without bias.

The head is multinomial logistic regression, started from the base model's own classifier rows and pulled back
towards them (L2 on the difference): where the new photos say nothing, the head keeps deciding as the base model did,
which is what stops an adapted model from forgetting. Calibration and thresholds need scores of photos the head was
not fitted on, so `cross_fit` scores every photo with a head fitted on the other folds (folds by group: one object's
photos never straddle a fold).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

__all__ = ["FOLDS", "Head", "cross_fit", "fit_head"]

FOLDS = 5
DEFAULT_STAY_CLOSE = 1e-3  # pull towards the start weights, per unit of mean loss (see training.adapt.PULLS)


@dataclass(frozen=True)
class Head:
    """logits = embeddings @ weight.T + bias, as the exported graph's classifier computes them."""

    weight: np.ndarray  # (labels, features) float32
    bias: np.ndarray  # (labels,) float32

    def logits(self, embeddings: np.ndarray) -> np.ndarray:
        return (embeddings @ self.weight.T + self.bias).astype(np.float32)


def fit_head(
    embeddings: np.ndarray, targets: np.ndarray, weights: np.ndarray, start: Head, *,
    stay_close: float | np.ndarray = DEFAULT_STAY_CLOSE,
) -> Head:
    """Minimise the weighted cross-entropy plus `stay_close` (one value, or one per label) times the squared distance
    to `start` (L-BFGS)."""
    x = torch.from_numpy(embeddings.astype(np.float32))
    y = torch.from_numpy(targets.astype(np.int64))
    w = torch.from_numpy((weights / weights.sum()).astype(np.float32))
    origin_weight, origin_bias = torch.from_numpy(start.weight), torch.from_numpy(start.bias)
    weight, bias = origin_weight.clone().requires_grad_(), origin_bias.clone().requires_grad_()
    pull = torch.from_numpy(np.broadcast_to(np.asarray(stay_close, np.float32), origin_bias.shape).copy())
    optimiser = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=200, history_size=20,
                                  line_search_fn="strong_wolfe")

    def loss() -> torch.Tensor:
        optimiser.zero_grad()
        cross_entropy = (torch.nn.functional.cross_entropy(x @ weight.T + bias, y, reduction="none") * w).sum()
        distance = (weight - origin_weight).pow(2).sum(dim=1) + (bias - origin_bias).pow(2)
        value = cross_entropy + (pull * distance).sum()
        value.backward()
        return value

    optimiser.step(loss)
    return Head(weight.detach().numpy().copy(), bias.detach().numpy().copy())


def cross_fit(
    embeddings: np.ndarray, targets: np.ndarray, weights: np.ndarray, groups: Sequence[str], start: Head, *,
    stay_close: float | np.ndarray = DEFAULT_STAY_CLOSE,
) -> np.ndarray:
    """Every photo's logits from a head fitted on the folds it is not in."""
    folds = np.array([_fold(group) for group in groups])
    logits = np.zeros((len(targets), len(start.bias)), np.float32)
    for fold in range(FOLDS):
        held_out = folds == fold
        if not held_out.any():
            continue
        head = fit_head(embeddings[~held_out], targets[~held_out], weights[~held_out], start, stay_close=stay_close)
        logits[held_out] = head.logits(embeddings[held_out])
    return logits


def _fold(group: str) -> int:
    """A stable fold per group, independent of photo order and Python's hash seed."""
    return int.from_bytes(hashlib.sha256(f"fold:{group}".encode()).digest()[:8], "big") % FOLDS
