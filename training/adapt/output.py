"""What adapt writes and prints: the adapted model's metadata (its version a fingerprint of data and options), the
model itself after a parity check against the fitted head (and an optional int8 twin), and the summary."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from pathlib import Path

from training.adapt.inputs import fingerprint
from training.adapt_config import AdaptConfig
from training.artefacts import check_logits, staged
from training.data import Sample, spread
from training.features import batch_features
from training.head import Head
from training.onnx_head import write_with_head
from training.options import as_json, weight_settings
from training.quantize import quantize_model
from wildvision.classifier import Classifier, twin_path
from wildvision.images import load_image
from wildvision.model_info import ModelInfo, OperatingPoint

__all__ = ["adapted_info", "check_head_parity", "print_summary", "run_fingerprint", "write"]

# Options whose value is a file or folder: what reaches the model is the file's content, which the fingerprint takes
# from the data's content hash, the base's digest and the replay's provenance, so a moved folder keeps the version.
_PATH_OPTIONS = frozenset({"model", "data", "base_data", "reference"})


def run_fingerprint(base: Classifier, args: AdaptConfig, data: dict[str, object]) -> str:
    """SHA-256 of everything the written model depends on: the labelled photos' content, the base model, what was
    replayed, and every option the weights or thresholds depend on (`changes_weights`)."""
    options = {name: value for name, value in weight_settings(args).items() if name not in _PATH_OPTIONS}
    facts = {"labelled": data["labelled"]["content_sha256"], "base": base.identity.digest,
             "replayed": data["replayed"], "options": options}
    return hashlib.sha256(json.dumps(facts, sort_keys=True, default=str).encode()).hexdigest()


def adapted_info(
    base: Classifier, args: AdaptConfig, labels: list[str], temperature: float,
    points: dict[str, OperatingPoint], metrics: dict[str, object], labelled: list[Sample],
    replayed: dict[str, object] | None,
) -> ModelInfo:
    labelled_fingerprint = fingerprint(labelled)
    data = {"labelled": labelled_fingerprint, "replayed": replayed,
            # as `wildvision info` reads a training run's counts: every labelled photo was fitted (cross-validated)
            "by_split": {"adapted": labelled_fingerprint["by_label"]}}
    run = run_fingerprint(base, args, data)
    # two runs that differ in data or in any option that changes the model never share a version
    version = args.version or f"{base.info.version}+adapted.{run[:8]}"
    config = as_json(args)  # every option, JSON-ready, as train records its own
    return replace(
        base.info, name=args.name or base.info.name, version=version, labels=tuple(labels), temperature=temperature,
        operating_points=points, metrics=metrics, precision="float32",
        training={"method": "training.adapt: new classifier head on the base model's frozen embeddings",
                  "adapted_from": {"name": base.info.name, "version": base.info.version,
                                   "digest": base.identity.digest, "file": args.model.name},
                  "parent": f"{base.info.full_name} ({base.identity.digest})", "data": data, "config": config,
                  "run_sha256": run, "base_training": dict(base.info.training)},
    )


def write(args: AdaptConfig, base: Classifier, head: Head, info: ModelInfo, labelled: list[Sample]) -> None:
    """Write the model (and its int8 twin) only after the checks passed; nothing appears at --out otherwise."""
    side = base.info.preprocessing.input_size
    checked = set(spread(labelled, args.parity_photos))
    photos = [load_image(s.path, min_side=side) for s in sorted(checked, key=lambda s: str(s.path))]
    with staged(args.out.parent) as staging:  # nothing appears at --out (nor its twin) unless every check passed
        candidate = staging.path(args.out)
        write_with_head(args.model, head, info, candidate)
        difference = check_head_parity(base, head, candidate, photos, args.tolerance)
        print(f"parity on {len(photos)} photos: max logit difference {difference:.2e}")
        if args.int8:
            # int8 ranges from photos other than those its agreement is checked on
            rest = [s for s in labelled if s not in checked] or labelled
            calibration = [load_image(s.path, min_side=side) for s in spread(rest, 100)]
            twin = staging.path(twin_path(args.out, "int8"))
            agreement = quantize_model(candidate, twin, calibration, parity_photos=photos)
            print(f"int8: against float32, {agreement}")


def check_head_parity(base: Classifier, head: Head, candidate: Path, photos: list, tolerance: float) -> float:
    """Largest logit difference between the written model and the fitted head on the base model's embeddings.

    Also checks the explanations: a class activation map averaged over the photo plus the bias is the logit, so a
    graph whose `activation_map` read other weights than its classifier is refused too.
    """
    batch = base.prepare_images(photos)  # the adapted model keeps the base model's preprocessing
    expected = head.logits(batch_features(base, batch)[0])
    adapted = Classifier(candidate)
    actual, maps = adapted.outputs(batch, ("logits", "activation_map"))
    from_maps = maps.mean(axis=(2, 3)) + head.bias
    return check_logits(expected, actual, tolerance, differ="the written model differs from the fitted head",
                        also=(from_maps,))


def print_summary(info: ModelInfo, metrics: dict[str, object], seconds: float) -> None:
    print(f"{info.full_name}: labels {list(info.labels)}, temperature {info.temperature:.3f}")
    for label, point in info.operating_points.items():
        print(f"  {label}: review {point.review:.4f}, block {point.block:.4f} (review by {metrics['thresholds']})")
    print(f"cross-validated on {metrics['photos']} labelled photos: accuracy {metrics['accuracy']}, "
          f"decisions {metrics['decisions']}")
    search = metrics["search"]
    print(f"pull towards the base head {metrics['pull']}, fitted head's share {metrics['mix']}: cross-validated "
          f"{search['figure']} on your photos {search['base_gain']:.4f} (base) -> {search['gain']:.4f}, "
          f"{search['accepted']} of {search['candidates']} candidates accepted")
    for name in ("forgetting", "base_val"):
        if name in metrics:
            _print_verdict(metrics[name])
    if "open_world" in metrics:
        rates = metrics["open_world"]
        print(f"reference everyday photos ({rates['photos']}, calib): flagged {rates['flagged']:.2%} (base "
              f"{rates['base_flagged']:.2%}), blocked {rates['blocked']:.2%} (base {rates['base_blocked']:.2%})")
    print(f"done in {seconds:.0f} s")


def _print_verdict(verdict: dict[str, object]) -> None:
    role = "judged" if verdict["part"] != "val" else "held out, reported"
    rows = {"all": verdict, **verdict["by_source"]}
    worst = min(rows, key=lambda name: rows[name]["change_bound"])
    print(f"base {verdict['part']} ({verdict['photos']} photos, {role}): at the decision "
          f"{verdict['base_decision_accuracy']} -> {verdict['decision_accuracy']} ({verdict['decision_change']:+.4f}); "
          f"weakest {worst} ({rows[worst]['photos']}): {rows[worst]['decision_change']:+.4f}, "
          f"{rows[worst]['lost']} newly wrong, {rows[worst]['gained']} newly right; "
          f"{'within' if verdict['accepted'] else 'beyond'} {verdict['tolerance']:g} at 95 % confidence")
