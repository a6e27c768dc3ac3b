"""Adapt a released wildvision model to a platform's own labelled photos in minutes on a CPU.

`python -m training.adapt --model BASE.onnx --data LABELLED [--data ...] [--base-data BASE_DATA ...] --out NEW.onnx`

The base model's network stays as it is; a new classifier head is fitted on the embeddings the base model's own graph
computes (`training.features`, cached and resumable), starting from and pulled towards the base head so that what
the new photos do not speak to is decided as before (`training.head`). With `--base-data` a sample of the base
model's own training photos is replayed beside the new ones (weighted equally in total), other training photos of it
(the anchor) choose the pull, the weakest that keeps the base's accuracy on them, and its `val` photos measure the
forgetting that is reported; without base data a fixed, firm pull holds the base labels. New labels (`--new-label`)
get their own rows and, unless named `not_*`, operating points.

Temperature and thresholds are fitted on cross-validated scores: every photo scored by a head that never saw it, so
a few hundred labelled photos serve for fitting and calibrating at once. The output is a normal wildvision model with
its own name and version whose metadata records the base model (name, version, digest) and the data's fingerprints;
before it is written, its logits and explanations must match the fitted head applied to the base model's embeddings
on real photos (as `training.export` checks its graphs), and `--int8` adds a checked int8 twin.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence

import numpy as np

from training.calibration import choose_operating_point, fit_temperature, softmax
from training.checks import similar_labels
from training.data import DataSource, Sample, content_hash, label_sources, manifest_hash, parse_relabel
from training.errors import DataError, run_command
from training.export import ParityError
from training.features import batch_features, compute_features
from training.head import DEFAULT_STAY_CLOSE, Head, cross_fit, fit_head
from training.metrics import measure
from training.onnx_head import read_head, write_with_head
from training.quantize import quantize_model
from training.train import HARMLESS_PREFIX
from wildvision.classifier import Classifier
from wildvision.images import load_image
from wildvision.model_info import ModelInfo, OperatingPoint
from wildvision.preprocess import to_batch

__all__ = ["PULLS", "Adapted", "Anchor", "anchor_from", "check_head_parity", "fit_adapted", "main", "parse_args",
           "start_head"]

MIN_NEW_LABEL_PHOTOS = 5  # a new label needs photos in most of the cross-validation folds to be fitted and calibrated
THIN_PROHIBITED_PHOTOS = 50  # below this, 95 % recall is set by the 2nd or 3rd weakest photo: a warning, not a refusal
# Pulls towards the base head's weights (per unit of mean loss) tried, weakest first, where anchor photos can say
# which one keeps the base's accuracy. Embeddings are pooled activations in [0, 6] over 1280 features: small weight
# changes on many features add up to large logit changes, so the pull that holds the head spans five decades.
PULLS = (1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1, 1.0, 3.0, 10.0, 30.0)
DEFAULT_MAX_FORGETTING = 0.005  # half the 0.01 a release may lose on the base's val: the anchor is another sample
# Without base data nothing can choose the pull. In the shared-data simulation (ImageNet network, Towneley as the
# platform, 100 and 300 photos) pulls up to 1.0 lost 1.2-9 points on base training photos and 10 lost 0.2-0.3, so
# 10 it is: measured on base *training* photos, never on the val photos the README's forgetting figures come from.
DEFAULT_STAY_CLOSE_ALONE = 10.0


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m training.adapt", description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, required=True, help="the wildvision model to adapt (.onnx)")
    parser.add_argument("--data", type=Path, action="append", required=True,
                        help="labelled photos: folder per label, a CSV (path,label[,group]) or a folder with "
                             "manifest.csv, e.g. the CSV training.select wrote and a reviewer filled in; repeatable")
    parser.add_argument("--base-data", type=Path, action="append", default=[],
                        help="the base model's training data: a sample of its non-val photos is replayed, its val "
                             "photos measure forgetting; repeatable")
    parser.add_argument("--out", type=Path, required=True, help="the .onnx file to write")
    parser.add_argument("--new-label", action="append", default=[], metavar="LABEL",
                        help="a label the base model lacks; any other unknown label in the data is refused as a typo")
    parser.add_argument("--relabel", nargs="*", default=[], metavar="KIND=LABEL",
                        help="give photos of a `kind` their own label, in --data and --base-data")
    parser.add_argument("--name", help="model name (default: the base model's)")
    parser.add_argument("--version", help="model version (default: the base version + '+adapted.' + data fingerprint)")
    parser.add_argument("--review-recall", type=float, default=0.95, help="share of prohibited photos sent to review")
    parser.add_argument("--review-fpr", type=float,
                        help="open world: set review so that at most this share of harmless photos is flagged "
                             "(replaces --review-recall; a new label with few photos needs it, see the README)")
    parser.add_argument("--block-fpr", type=float, default=0.005, help="highest share of harmless photos blocked")
    parser.add_argument("--base-photos", type=int, default=1000, help="base training photos replayed (with --base-data)")
    parser.add_argument("--anchor-photos", type=int, default=1000,
                        help="other base training photos (not replayed) on which the pull towards the base head is "
                             "chosen: the weakest pull that loses at most --max-forgetting accuracy there "
                             "(with --base-data)")
    parser.add_argument("--max-forgetting", type=float, default=DEFAULT_MAX_FORGETTING,
                        help="accuracy the adapted head may lose on the anchor photos")
    parser.add_argument("--check-photos", type=int, default=1000,
                        help="base val photos on which forgetting is measured and reported (with --base-data)")
    parser.add_argument("--stay-close", type=float,
                        help=f"a fixed pull towards the base head's weights instead of the search (default without "
                             f"--base-data: {DEFAULT_STAY_CLOSE_ALONE})")
    parser.add_argument("--work", type=Path, help="feature cache, kept for reruns (default: OUT's folder/.adapt-cache)")
    parser.add_argument("--parity-photos", type=int, default=16, help="labelled photos the written model is checked on")
    parser.add_argument("--tolerance", type=float, default=1e-3, help="largest allowed logit difference")
    parser.add_argument("--int8", action="store_true", help="also write a checked int8 twin NAME.int8.onnx")
    parser.add_argument("--threads", type=int, help="onnxruntime threads (default: all cores)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    return run_command(lambda: adapt(args))


@dataclass(frozen=True)
class FitSet:
    """The photos a head is fitted on: the platform's labelled ones, then the replayed base photos."""

    samples: list[Sample]
    embeddings: np.ndarray
    targets: np.ndarray
    weights: np.ndarray  # per photo; the labelled and the replayed photos weigh the same in total
    labelled: int  # how many of the rows are the platform's photos


def adapt(args: argparse.Namespace) -> int:
    started = time.monotonic()
    base = Classifier(args.model, threads=args.threads)
    base_head = read_head(args.model)  # before any photo is read: refuse a model that cannot be adapted at once
    labelled, base_samples = _read_data(args.data, args.base_data, parse_relabel(args.relabel))
    labels = _label_set(base.info, labelled, args.new_label)
    replay, anchor_samples, check = _base_photos(base_samples, labels, args.base_photos, args.anchor_photos,
                                                  args.check_photos)
    cache = args.work or args.out.parent / ".adapt-cache"
    fit_set = _fit_set(base, labelled, replay, labels, cache)
    start = start_head(base_head, base.info.labels, labels)
    anchor = _anchor(base, start, labels, anchor_samples, cache) if anchor_samples else None
    pulls = [args.stay_close] if args.stay_close is not None else PULLS if anchor else [DEFAULT_STAY_CLOSE_ALONE]
    prohibited = [label for label in labels if label in base.info.operating_points
                  or (label in args.new_label and not label.startswith(HARMLESS_PREFIX))]
    fitted = fit_adapted(fit_set.embeddings, fit_set.targets, fit_set.weights, [s.group for s in fit_set.samples],
                         start, labels, prohibited, review_recall=None if args.review_fpr else args.review_recall,
                         review_fpr=args.review_fpr, block_fpr=args.block_fpr, pulls=pulls, anchor=anchor,
                         new_labels=len(labels) - len(base.info.labels), max_forgetting=args.max_forgetting)
    head, temperature, points = fitted.head, fitted.temperature, fitted.operating_points
    if not base_samples and args.review_fpr is None:
        _warn_if_thresholds_are_thin(fit_set.targets, labels, prohibited)
    probabilities = softmax(fitted.held_out_logits[: fit_set.labelled], temperature)
    metrics = {"split": "cross-validated", **measure(probabilities, fit_set.samples[: fit_set.labelled], labels, points),
               "pull": fitted.pull, "anchor_change": fitted.anchor_change}
    if check:
        metrics["base_val"] = _forgetting(base, head, temperature, labels, check, cache)
    info = _adapted_info(base, args, labels, temperature, points, metrics, labelled, replay)
    _write(args, base, head, info, labelled)
    _print_summary(info, metrics, time.monotonic() - started)
    return 0


def _warn_if_thresholds_are_thin(targets: np.ndarray, labels: Sequence[str], prohibited: Sequence[str]) -> None:
    """Say where `review` was set by the recall of a few dozen photos and nothing else bounds its false alarms.

    Without base data, thresholds fitted at a recall of a handful of prohibited photos know nothing of the rest of
    the world: in the shared-data simulation, 11 labelled ivory photos gave thresholds that flagged 39 % of everyday
    photos.
    """
    counts = {label: int((targets == labels.index(label)).sum()) for label in prohibited}
    thin = {label: count for label, count in counts.items() if count < THIN_PROHIBITED_PHOTOS}
    if thin:
        print(f"warning: review is set at a recall of only {thin} labelled photo(s) and no base data bounds its "
              "false alarms; give --base-data, or --review-fpr, or keep your own thresholds "
              "(--operating-points at load time)", file=sys.stderr)


def _read_data(
    data: Sequence[Path], base_data: Sequence[Path], relabel: dict[str, str]
) -> tuple[list[Sample], list[Sample]]:
    """The labelled photos and the base data's, read together so that a relabel rule may match either; refused where
    a listed photo is missing: a silently smaller set would shift the thresholds."""
    labelled_sources = [DataSource(Path(path)) for path in data]
    samples = label_sources(labelled_sources + [DataSource(Path(path)) for path in base_data], relabel)
    missing = [str(s.path) for s in samples if not s.path.is_file()]
    if missing:
        raise DataError(f"{len(missing)} photo(s) not found, e.g. {missing[:3]}; fix the paths in the CSV "
                        "(relative to the CSV's folder) or remove their rows")
    names = {source.name for source in labelled_sources}
    labelled = [s for s in samples if s.dataset in names]
    if not labelled:
        raise DataError(f"no labelled photos in {[str(path) for path in data]}")
    return labelled, [s for s in samples if s.dataset not in names]


def _label_set(info: ModelInfo, samples: Sequence[Sample], new_labels: Sequence[str]) -> list[str]:
    """The base model's labels, then the declared new ones; any other label in the data is refused as a typo."""
    present = {s.label for s in samples}
    unknown = sorted(present - set(info.labels) - set(new_labels))
    if unknown:
        raise DataError(f"label(s) {unknown} in the data are not the model's {list(info.labels)}; fix them, or "
                        "declare a new label with --new-label LABEL")
    clashing = sorted(set(new_labels) & set(info.labels))
    if clashing:
        raise DataError(f"--new-label {clashing}: the base model already has these labels")
    labels = list(info.labels) + sorted(set(new_labels))
    for first, second in similar_labels(labels):
        raise DataError(f"labels {first!r} and {second!r} look like one label spelt two ways; rename the new label")
    short = [label for label in new_labels if sum(s.label == label for s in samples) < MIN_NEW_LABEL_PHOTOS]
    if short:
        raise DataError(f"new label(s) {short} need at least {MIN_NEW_LABEL_PHOTOS} labelled photos each")
    return labels


def _base_photos(
    samples: list[Sample], labels: Sequence[str], replay_count: int, anchor_count: int, check_count: int
) -> tuple[list[Sample], list[Sample], list[Sample]]:
    """From the base data's non-val photos a replay sample and, apart from it, anchor photos; and a sample of its val
    photos (none of them without base data)."""
    unknown = sorted({s.label for s in samples} - set(labels))
    if unknown:
        raise DataError(f"--base-data has labels {unknown} that the adapted model would not have; relabel them")
    # Only the split the data states counts: a model trained on it held its `val` photos out, so they measure it.
    val = [s for s in samples if s.split == "val"]
    rest = [s for s in samples if s.split != "val"]
    ranked = _sample(rest, replay_count + anchor_count)
    return ranked[:replay_count], ranked[replay_count:], _sample(val, check_count)


def _sample(samples: list[Sample], count: int) -> list[Sample]:
    """A fixed pseudo-random subset: the same photos on every rerun, so the feature cache is reused."""
    ranked = sorted(samples, key=lambda s: hashlib.sha256(str(s.path).encode()).hexdigest())
    return [replace(s, group=f"base:{s.group}") for s in ranked[:count]]


def _fit_set(base: Classifier, labelled: list[Sample], replay: list[Sample], labels: list[str], cache: Path) -> FitSet:
    samples = labelled + replay
    features = compute_features(base, [s.path for s in samples], cache=cache / "features")
    kept = [samples[i] for i in features.kept]
    is_labelled = np.array([i < len(labelled) for i in features.kept])
    targets = np.array([labels.index(s.label) for s in kept])
    weights = np.where(is_labelled, 1.0 / max(is_labelled.sum(), 1), 1.0 / max((~is_labelled).sum(), 1))
    return FitSet(kept, features.embeddings, targets, weights, int(is_labelled.sum()))


@dataclass(frozen=True)
class Adapted:
    head: Head
    temperature: float
    operating_points: dict[str, OperatingPoint]
    held_out_logits: np.ndarray  # every fitting photo scored by a head fitted without its fold
    pull: float  # the pull towards the base head that was used
    anchor_change: float | None  # accuracy change on the anchor photos (None without them)


@dataclass(frozen=True)
class Anchor:
    """Base photos held out of fitting: the adapted head must keep (nearly) the base head's accuracy on them."""

    embeddings: np.ndarray
    targets: np.ndarray
    base_accuracy: float

    def change(self, head: Head) -> float:
        return float((head.logits(self.embeddings).argmax(1) == self.targets).mean()) - self.base_accuracy


def fit_adapted(
    embeddings: np.ndarray, targets: np.ndarray, weights: np.ndarray, groups: Sequence[str], start: Head,
    labels: Sequence[str], prohibited: Sequence[str], *, review_recall: float | None, block_fpr: float,
    pulls: Sequence[float], review_fpr: float | None = None, new_labels: int = 0, anchor: Anchor | None = None,
    max_forgetting: float = DEFAULT_MAX_FORGETTING,
) -> Adapted:
    """The adapted head with the weakest of `pulls` that keeps the anchor's accuracy within `max_forgetting` (the
    strongest where none does), its temperature and thresholds (fitted on cross-validated logits).

    The pull holds the base labels' rows; the last `new_labels` rows have nothing to forget and are only kept small
    (`DEFAULT_STAY_CLOSE`), so that a firm pull cannot stop a new label being learnt.
    """
    for pull in sorted(pulls):
        per_row = np.array([pull] * (len(labels) - new_labels) + [DEFAULT_STAY_CLOSE] * new_labels)
        head = fit_head(embeddings, targets, weights, start, stay_close=per_row)
        change = anchor.change(head) if anchor is not None else None
        if change is None or change >= -max_forgetting:
            break
    if change is not None and change < -max_forgetting:
        print(f"warning: even the strongest pull ({pull}) loses {-change:.4f} accuracy on the base anchor photos",
              file=sys.stderr)
    held_out = cross_fit(embeddings, targets, weights, groups, start, stay_close=per_row)
    temperature, points = _calibrate(held_out, targets, labels, prohibited, review_recall, review_fpr, block_fpr)
    return Adapted(head, temperature, points, held_out, pull, change)


def anchor_from(embeddings: np.ndarray, targets: np.ndarray, start: Head, base_labels: int) -> Anchor:
    """An anchor whose base accuracy is the base head's own (new labels, after the base ones, masked out)."""
    base_predictions = start.logits(embeddings)[:, :base_labels].argmax(1)
    return Anchor(embeddings, targets, float((base_predictions == targets).mean()))


def _anchor(base: Classifier, start: Head, labels: list[str], samples: list[Sample], cache: Path) -> Anchor:
    features = compute_features(base, [s.path for s in samples], cache=cache / "features")
    targets = np.array([labels.index(samples[i].label) for i in features.kept])
    return anchor_from(features.embeddings, targets, start, len(base.info.labels))


def start_head(base_head: Head, base_labels: Sequence[str], labels: Sequence[str]) -> Head:
    """The base head's rows for its labels; a new label's row starts at zero (no evidence either way)."""
    weight = np.zeros((len(labels), base_head.weight.shape[1]), np.float32)
    bias = np.zeros(len(labels), np.float32)
    for index, label in enumerate(base_labels):
        weight[labels.index(label)], bias[labels.index(label)] = base_head.weight[index], base_head.bias[index]
    return Head(weight, bias)


def _calibrate(
    logits: np.ndarray, targets: np.ndarray, labels: Sequence[str], prohibited: Sequence[str],
    review_recall: float | None, review_fpr: float | None, block_fpr: float,
) -> tuple[float, dict[str, OperatingPoint]]:
    """Temperature and each prohibited label's thresholds from cross-validated logits."""
    missing = [label for label in prohibited if not (targets == labels.index(label)).any()]
    if missing:
        raise DataError(f"no photos of the prohibited label(s) {missing} to fit thresholds on: label some, or give "
                        "the base model's data with --base-data")
    temperature = fit_temperature(logits, targets)
    probabilities = softmax(logits, temperature)
    points = {label: choose_operating_point(probabilities[:, labels.index(label)], targets == labels.index(label),
                                            block_false_positive_rate=block_fpr, review_recall=review_recall,
                                            review_false_positive_rate=review_fpr)
              for label in prohibited}
    return temperature, points


def _forgetting(
    base: Classifier, head: Head, temperature: float, labels: list[str], check: list[Sample], cache: Path
) -> dict[str, object]:
    """Accuracy of the base and the adapted model on base val photos, scored from the same embeddings."""
    features = compute_features(base, [s.path for s in check], cache=cache / "features")
    samples = [check[i] for i in features.kept]
    targets = np.array([labels.index(s.label) for s in samples])
    base_targets = np.array([list(base.info.labels).index(s.label) if s.label in base.info.labels else -1
                             for s in samples])
    base_accuracy = float((features.logits.argmax(1) == base_targets).mean())
    adapted_accuracy = float((softmax(head.logits(features.embeddings), temperature).argmax(1) == targets).mean())
    return {"photos": len(samples), "base_accuracy": round(base_accuracy, 4),
            "adapted_accuracy": round(adapted_accuracy, 4), "change": round(adapted_accuracy - base_accuracy, 4)}


def _adapted_info(
    base: Classifier, args: argparse.Namespace, labels: list[str], temperature: float,
    points: dict[str, OperatingPoint], metrics: dict[str, object], labelled: list[Sample], replay: list[Sample],
) -> ModelInfo:
    data = {"labelled": _fingerprint(labelled), "replayed": _fingerprint(replay) if replay else None,
            # as `wildvision info` reads a training run's counts: every labelled photo was fitted (cross-validated)
            "by_split": {"adapted": _fingerprint(labelled)["by_label"]}}
    version = args.version or f"{base.info.version}+adapted.{data['labelled']['content_sha256'][:8]}"
    config = {key: (str(value) if isinstance(value, Path) else value) for key, value in vars(args).items()}
    config = {**config, "data": [str(p) for p in args.data], "base_data": [str(p) for p in args.base_data]}
    return replace(
        base.info, name=args.name or base.info.name, version=version, labels=tuple(labels), temperature=temperature,
        operating_points=points, metrics=metrics, precision="float32",
        training={"method": "training.adapt: new classifier head on the base model's frozen embeddings",
                  "adapted_from": {"name": base.info.name, "version": base.info.version,
                                   "digest": base.identity.digest, "file": args.model.name},
                  "parent": f"{base.info.full_name} ({base.identity.digest})", "data": data, "config": config,
                  "base_training": dict(base.info.training)},
    )


def _fingerprint(samples: list[Sample]) -> dict[str, object]:
    counts: dict[str, int] = {}
    for sample in samples:
        counts[sample.label] = counts.get(sample.label, 0) + 1
    return {"photos": len(samples), "by_label": dict(sorted(counts.items())),
            "manifest_sha256": manifest_hash(samples), "content_sha256": content_hash(samples)}


def _write(args: argparse.Namespace, base: Classifier, head: Head, info: ModelInfo, labelled: list[Sample]) -> None:
    """Write the model (and its int8 twin) only after the checks passed; nothing appears at --out otherwise."""
    side = base.info.preprocessing.input_size
    checked = set(_spread(labelled, args.parity_photos))
    photos = [load_image(s.path, min_side=side) for s in sorted(checked, key=lambda s: str(s.path))]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    twin = args.out.with_name(args.out.stem + ".int8.onnx")
    with tempfile.TemporaryDirectory(dir=args.out.parent) as scratch:
        candidate = Path(scratch) / args.out.name
        write_with_head(args.model, head, info, candidate)
        difference = check_head_parity(base, head, candidate, photos, args.tolerance)
        print(f"parity on {len(photos)} photos: max logit difference {difference:.2e}")
        if args.int8:
            # int8 ranges from photos other than those its agreement is checked on
            rest = [s for s in labelled if s not in checked] or labelled
            calibration = [load_image(s.path, min_side=side) for s in _spread(rest, 100)]
            agreement = quantize_model(candidate, Path(scratch) / twin.name, calibration, parity_photos=photos)
            print(f"int8: against float32, {agreement}")
        candidate.replace(args.out)
        if args.int8:
            (Path(scratch) / twin.name).replace(twin)


def check_head_parity(base: Classifier, head: Head, candidate: Path, photos: list, tolerance: float) -> float:
    """Largest logit difference between the written model and the fitted head on the base model's embeddings.

    Also checks the explanations: a class activation map averaged over the photo plus the bias is the logit, so a
    graph whose `activation_map` read other weights than its classifier is refused too.
    """
    batch = to_batch(photos, base.info.preprocessing)  # the adapted model keeps the base model's preprocessing
    expected = head.logits(batch_features(base, batch)[0])
    adapted = Classifier(candidate)
    actual, maps = adapted.session.run(["logits", "activation_map"], {adapted.session.get_inputs()[0].name: batch})
    from_maps = maps.mean(axis=(2, 3)) + head.bias
    difference = float(max(np.abs(expected - actual).max(), np.abs(from_maps - actual).max()))
    disagreements = int((expected.argmax(1) != actual.argmax(1)).sum())
    if disagreements or difference > tolerance:
        raise ParityError(f"the written model differs from the fitted head on {len(photos)} photos: {disagreements} "
                          f"top-label disagreements, max logit difference {difference:.2e} (tolerance {tolerance:.0e})")
    return difference


def _spread(samples: list[Sample], count: int) -> list[Sample]:
    step = max(1, len(samples) // max(count, 1))
    return samples[::step][:count]


def _print_summary(info: ModelInfo, metrics: dict[str, object], seconds: float) -> None:
    print(f"{info.full_name}: labels {list(info.labels)}, temperature {info.temperature:.3f}")
    for label, point in info.operating_points.items():
        print(f"  {label}: review {point.review:.4f}, block {point.block:.4f}")
    print(f"cross-validated on {metrics['photos']} labelled photos: accuracy {metrics['accuracy']}, "
          f"decisions {metrics['decisions']}")
    change = metrics["anchor_change"]
    print(f"pull towards the base head {metrics['pull']}" + (f" (anchor accuracy change {change:+.4f})"
                                                              if change is not None else " (no base data: fixed)"))
    if "base_val" in metrics:
        check = metrics["base_val"]
        print(f"base val ({check['photos']} photos): accuracy {check['base_accuracy']} -> {check['adapted_accuracy']} "
              f"({check['change']:+.4f})")
    print(f"done in {seconds:.0f} s")


if __name__ == "__main__":
    sys.exit(main())
