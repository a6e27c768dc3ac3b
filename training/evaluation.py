"""Score a model on photos of its recorded split, the way it ships, and measure it: the `Evaluation` that the
`training.evaluate` command, the label audit and the report all read.

Photos go through the wildvision library (loading, preprocessing, onnxruntime, calibration, decisions), so the
figures describe what a platform gets.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from training.data import Sample
from training.errors import DataError
from training.metrics import measure
from wildvision.classifier import Classifier
from wildvision.images import ImageLoadError

__all__ = ["SPLITS", "Evaluation", "evaluate"]

SPLITS = ("val", "calib", "train", "all")  # val and calib are held out of training; train and all are for audits
_BATCH = 32  # photos per onnxruntime call: batches amortise the call, and 32 at 288 px stay under 100 MB


@dataclass(frozen=True)
class Evaluation:
    """A model's raw outputs on held-out photos, and the metrics computed from them."""

    samples: list[Sample]  # the photos that could be scored, in order
    logits: np.ndarray  # uncalibrated, one row per sample
    probabilities: np.ndarray  # calibrated with the model's temperature
    metrics: dict[str, object]
    unreadable: list[str]  # one message per photo that could not be read


def evaluate(classifier: Classifier, samples: Sequence[Sample], *, split: str = "val") -> Evaluation:
    """Score the photos of one split (or `all`) of `samples`, the model's recorded split (`training.split`); photos
    that cannot be read are counted and named, not scored."""
    held_out = [s for s in samples if split in (s.split, "all")]
    if not held_out:
        raise DataError(f"no {split} photos in the model's split")
    labels = list(classifier.info.labels)
    unknown = {s.label for s in held_out} - set(labels)
    if unknown:
        raise DataError(f"the {split} photos have labels the model does not know: {sorted(unknown)}")
    logits, scored, unreadable = [], [], []
    for start in range(0, len(held_out), _BATCH):
        covers = []
        for sample in held_out[start : start + _BATCH]:
            try:
                covers.append(classifier.prepare(sample.path).tensors[0])  # training photos are stills
            except ImageLoadError as error:
                unreadable.append(str(error))
                continue
            scored.append(sample)
        if covers:
            logits.append(classifier.logits(np.stack(covers)))
    if unreadable:
        print(f"{len(unreadable)} unreadable photo(s) left out, e.g. {unreadable[0]}", file=sys.stderr)
    raw = np.concatenate(logits) if logits else np.zeros((0, len(labels)), np.float32)
    probabilities = classifier.probabilities(raw)
    metrics = measure(probabilities, scored, labels, classifier.info.operating_points)
    return Evaluation(scored, raw, probabilities, {**metrics, "unreadable": len(unreadable)}, unreadable)
