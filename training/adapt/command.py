"""`python -m training.adapt`: read the labels and the base's data, assemble the fitting set, search and judge, refuse
or write, summarise. Each job lives in its own module of `training.adapt`; this one only runs them in order."""

from __future__ import annotations

import sys
import time
from typing import Sequence

import numpy as np

from training.adapt import guards, inputs, output
from training.adapt.assembly import assemble
from training.adapt.fit import PULLS, Search, Thresholding, fit_adapted, start_head
from training.adapt.inputs import BaseCalibration
from training.adapt.judge import Judge
from training.adapt_config import DEFAULT_STAY_CLOSE_ALONE, AdaptConfig, parse_args
from training.calibration import softmax
from training.checks import HARMLESS_PREFIX
from training.data import parse_relabel
from training.errors import run_command
from training.features import compute_features
from training.metrics import measure
from training.onnx_head import read_head
from training.reference import find_reference, reference_path
from wildvision.classifier import Classifier

__all__ = ["adapt", "main"]


def main(argv: Sequence[str] | None = None) -> int:
    return run_command(lambda: adapt(parse_args(argv)))


def adapt(args: AdaptConfig) -> int:
    started = time.monotonic()
    rule = args.threshold_rule()
    base = Classifier(args.model, threads=args.threads)
    base_head = read_head(args.model)  # before any photo is read: refuse a model that cannot be adapted at once
    reference = find_reference(args.model, args.reference)
    relabel = parse_relabel(args.relabel)
    labelled, base_samples = inputs.read_data(args.data, args.base_data, relabel)
    labels = inputs.label_set(base.info, labelled, args.new_label)
    cache = args.work or args.out.parent / ".adapt-cache"
    data = inputs.base_data(base, base_samples, reference, labels, relabel, args, cache)
    features = compute_features(base, [s.path for s in labelled], cache=cache / "features")
    kept = [labelled[i] for i in features.kept]
    fit_set = assemble(features.embeddings, np.array([labels.index(s.label) for s in kept], dtype=np.int64),
                       [s.group for s in kept], data.replay, labels, samples=kept)
    start = start_head(base_head, base.info.labels, labels)
    base_calibration = BaseCalibration(base.info.temperature, base.info.operating_points, len(base.info.labels))
    prohibited = [label for label in labels if label in base.info.operating_points
                  or (label in args.new_label and not label.startswith(HARMLESS_PREFIX))]
    judged = data.judged is not None and len(data.judged)
    judge = (Judge.of("calib" if reference is not None else "base photos", data.judged, labels, prohibited, start,
                      base_calibration, args.max_forgetting) if judged else None)
    pulls = [args.stay_close] if args.stay_close is not None else PULLS if judge else [DEFAULT_STAY_CLOSE_ALONE]
    fitted = fit_adapted(fit_set, start, labels, prohibited,
                         search=Search(pulls, judge=judge, allow_forgetting=args.allow_forgetting),
                         thresholding=Thresholding(rule, data.open_world, base_calibration),
                         new_labels=len(labels) - len(base.info.labels))
    head, temperature, points = fitted.head, fitted.temperature, fitted.operating_points
    if data.open_world is None:
        bounded_by = "your photos and the replayed base photos" if base_samples else "your own harmless photos only"
        print(f"note: the open world cannot be checked: {args.model.name} has no reference data "
              f"({reference_path(args.model).name}); the thresholds follow the base's flags on {bounded_by}",
              file=sys.stderr)
        if rule.review_by == "recall":
            guards.warn_if_thresholds_are_thin(fit_set.targets[: fit_set.labelled], labels, prohibited)
    probabilities = softmax(fitted.held_out_logits[: fit_set.labelled], temperature)
    accepted = sum(c.verdict is None or c.verdict.accepted for c in fitted.candidates)
    metrics = {"split": "cross-validated", **measure(probabilities, fit_set.labelled_samples, labels, points),
               "pull": fitted.pull, "mix": fitted.mix, "thresholds": rule.review_by,
               "search": {"figure": "prohibited AUC", "gain": round(fitted.chosen.gain, 4),
                          "base_gain": round(fitted.base_gain, 4), "candidates": len(fitted.candidates),
                          "accepted": accepted, "tried": [c.to_json() for c in fitted.candidates]}}
    if fitted.verdict is not None:
        metrics["forgetting"] = fitted.verdict.to_json()
    if data.check is not None and len(data.check):  # the same judge on vectors no choice saw: reported, not a gate
        check = Judge.of("val", data.check, labels, prohibited, start, base_calibration, args.max_forgetting)
        metrics["base_val"] = check.verdict(head, temperature, points).to_json()
    if data.open_world is not None:
        metrics["open_world"] = guards.open_world_rates(data.open_world, head, start, temperature, points, labels,
                                                        base_calibration)
    guards.refuse_forgetting(fitted, args)
    if data.open_world is not None:
        guards.refuse_flooding(metrics["open_world"], args)
    info = output.adapted_info(base, args, labels, temperature, points, metrics, labelled, data.replayed)
    output.write(args, base, head, info, labelled)
    output.print_summary(info, metrics, time.monotonic() - started)
    return 0
