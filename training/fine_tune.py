"""The training loop: the unfrozen blocks and classifier fine-tuned on the cached frozen features, resumable by epoch.

Each epoch sees one random cached view per training photo. After every epoch the whole training state is saved
(`TrainingState`); rerunning the same command resumes after the last finished epoch and ends with the same weights as
an uninterrupted run. Only options the weights depend on decide whether a state resumes (`run_key`).
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from training.checkpoint import load_training_state
from training.data import Sample
from training.frozen_features import FeatureCache, cache_key
from training.options import weight_settings
from training.progress import progress
from training.train_config import TrainConfig

__all__ = ["BalancedLoss", "TrainingState", "label_weights", "run_key", "state_path", "train_tail"]


def train_tail(
    tail: nn.Module, cache: FeatureCache, samples: list[Sample], labels: list[str], config: TrainConfig,
    penalty: Callable[[], torch.Tensor] | None = None,
) -> dict[str, list[float]]:
    """Fine-tune the unfrozen blocks and classifier; each epoch sees one random cached view per training photo.

    `penalty`, where given, is added to every batch's loss (L2-SP's pull towards the pretrained weights). After every
    epoch the whole training state is saved; re-running the same command resumes after the last finished epoch and
    ends with the same weights as an uninterrupted run. Returns the history: mean loss per epoch.
    """
    rows = cache.rows(samples, "train", clean_only=False)
    owners = sorted(rows)
    targets = torch.tensor([labels.index(samples[o].label) for o in owners])
    loss_function = BalancedLoss(targets, len(labels), label_smoothing=config.label_smoothing)
    optimiser = torch.optim.AdamW([p for p in tail.parameters() if p.requires_grad], lr=config.lr, weight_decay=0.01)
    total_steps = config.epochs * math.ceil(len(owners) / config.batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=config.lr, total_steps=max(1, total_steps),
                                                   pct_start=0.1)
    generator = torch.Generator().manual_seed(config.seed)
    state = TrainingState(state_path(config, samples), tail, optimiser, schedule, generator)
    tail.train()
    for epoch in range(state.resume(), config.epochs):
        order = torch.randperm(len(owners), generator=generator)
        losses = []
        for start in progress(range(0, len(owners), config.batch_size), f"epoch {epoch + 1}/{config.epochs}"):
            batch = order[start : start + config.batch_size]
            picks = [rows[owners[i]][int(torch.randint(len(rows[owners[i]]), (1,), generator=generator))] for i in batch]
            features = cache.features[picks].float().contiguous(memory_format=torch.channels_last)
            loss = loss_function(tail(features), targets[batch])
            if penalty is not None:
                loss = loss + penalty()
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            schedule.step()
            losses.append(loss.item())
        print(f"epoch {epoch + 1}: mean loss {np.mean(losses):.4f}")
        state.history["loss"].append(round(float(np.mean(losses)), 4))
        state.save(epoch + 1)
    return state.history


class BalancedLoss(nn.Module):
    """Label-smoothed cross-entropy in which each label counts about as much as another, however few its photos.

    Each photo is weighted by its own label's inverse frequency, capped at `MAX_CLASS_WEIGHT` times the commonest
    label's weight so that a 38-photo label cannot swamp 4,000 others. The weight is applied per photo, not through
    `CrossEntropyLoss(weight=...)`: that also weights the smoothing term, which then pulls *every* photo towards the
    rarest label (a model answering the rare label for nearly everything).
    """

    MAX_CLASS_WEIGHT = 10.0

    def __init__(self, targets: torch.Tensor, label_count: int, *, label_smoothing: float) -> None:
        super().__init__()
        self.register_buffer("weights", label_weights(targets, label_count))
        self.per_photo = nn.CrossEntropyLoss(reduction="none", label_smoothing=label_smoothing)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        weights = self.weights[targets]
        return (self.per_photo(logits, targets) * weights).sum() / weights.sum()


def label_weights(targets: torch.Tensor, label_count: int) -> torch.Tensor:
    """Each label's weight: its inverse frequency, capped at `BalancedLoss.MAX_CLASS_WEIGHT` times the commonest
    label's, scaled so that the mean weight over the photos is 1 (the learning rate means what it says)."""
    counts = torch.bincount(targets, minlength=label_count).float().clamp(min=1)
    weights = (counts.max() / counts).clamp(max=BalancedLoss.MAX_CLASS_WEIGHT)
    return weights / weights[targets].mean()


class TrainingState:
    """Everything an epoch boundary needs to resume exactly: weights, optimiser, schedule and random generators."""

    def __init__(self, path: Path, tail: nn.Module, optimiser, schedule, generator: torch.Generator) -> None:
        self.path, self.tail, self.optimiser, self.schedule, self.generator = path, tail, optimiser, schedule, generator
        self.history: dict[str, list[float]] = {"loss": []}

    def resume(self) -> int:
        """The number of epochs already done (0 for a fresh run), with the state restored."""
        if not self.path.is_file():
            return 0
        state = load_training_state(self.path)
        self.tail.load_state_dict(state["tail"])
        self.optimiser.load_state_dict(state["optimiser"])
        self.schedule.load_state_dict(state["schedule"])
        self.generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        self.history = state.get("history", self.history)
        print(f"resuming after epoch {state['epochs_done']} from {self.path}")
        return state["epochs_done"]

    def save(self, epochs_done: int) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        partial = self.path.with_suffix(".partial")
        torch.save({
            "epochs_done": epochs_done, "tail": self.tail.state_dict(), "optimiser": self.optimiser.state_dict(),
            "schedule": self.schedule.state_dict(), "generator": self.generator.get_state(),
            "torch_rng": torch.get_rng_state(), "history": self.history,
        }, partial)
        partial.replace(self.path)  # a kill mid-save leaves the previous epoch's state intact


def state_path(config: TrainConfig, samples: list[Sample]) -> Path:
    """Where a run's training state is kept: one file per run key in the run folder."""
    return config.out / f"training-state-{run_key(config, samples)}.pt"


def run_key(config: TrainConfig, samples: list[Sample]) -> str:
    """Training state resumes only into the same run: same data, features and every setting the weights depend on.

    Settings applied after training (names, prohibited labels, thresholds: `changes_weights=False` in
    `training.train_config`) are left out, so changing them and rerunning refits the thresholds on the finished
    training state in seconds.
    """
    settings = {key: str(value) for key, value in sorted(weight_settings(config).items())}
    return hashlib.sha256(json.dumps([cache_key(config, samples), settings]).encode()).hexdigest()[:16]
