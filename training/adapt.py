"""Adapt a released wildvision model to a platform's own labelled photos in minutes on a CPU.

`python -m training.adapt --model BASE.onnx --data LABELLED [--data ...] --out NEW.onnx`

The base model's network stays as it is; a new classifier head is fitted on the embeddings the base model's own graph
computes (`training.features`, cached and resumable), starting from and pulled towards the base head so that what
the new photos do not speak to is decided as before (`training.head`). The base model's own data comes as vectors in
its reference file (`training.reference`, `NAME.reference.npz` beside the model, in the wheel too), so a platform
needs nothing but its labels: a sample of the base's training photos is replayed beside the new ones (weighted equally
in total); its `calib` vectors, held out of the base's training, are the anchor that chooses the pull (the weakest
that keeps the base's accuracy on them, overall and in every large source) and, the everyday ones included, bound the
thresholds; its `val` vectors measure the forgetting (a model that loses more than 0.01 there is refused).
`--base-data` (the photos themselves) replaces the reference's replay and val vectors. New labels (`--new-label`) get
their own rows and, unless named `not_*`, operating points.

Thresholds keep the open world by default: `review` and `block` flag no more of each reference everyday source's
photos (and block no more of any source's) than the base model does. `--review-recall` or `--review-fpr` choose
otherwise, and a model whose thresholds flag more than `--max-everyday-flagged` of the reference everyday photos is
refused unless `--allow-flagging-everyday`. A model without reference data still adapts, matched to the base on the
platform's own harmless photos, with a note that the open world cannot be checked.

Temperature and thresholds are fitted on held-out scores: every labelled and replayed photo scored by a head that
never saw it (cross-validated), and the reference calib vectors, which no head is fitted on. The output is a normal
wildvision model with its own name and version whose metadata records the base model (name, version, digest) and the
data's fingerprints; before it is written, its logits and explanations must match the fitted head applied to the base
model's embeddings on real photos (as `training.export` checks its graphs), and `--int8` adds a checked int8 twin.
"""

from __future__ import annotations

import hashlib
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from training.adapt_config import (
    DEFAULT_MAX_FORGETTING, DEFAULT_STAY_CLOSE_ALONE, MAX_VAL_FORGETTING, AdaptConfig, parse_args,
)
from training.artefacts import check_logits, staged
from training.calibration import BaseScores, ThresholdRule, calibrate, flag_rates, flags, softmax
from training.checks import HARMLESS_PREFIX, similar_labels
from training.data import (
    DataSource, Sample, content_hash, label_sources, manifest_hash, parse_relabel, spread,
)
from training.errors import DataError, ExportRefused, run_command
from training.features import batch_features, compute_features
from training.head import DEFAULT_STAY_CLOSE, Head, cross_fit, fit_head
from training.metrics import measure
from training.onnx_head import read_head, write_with_head
from training.options import as_json
from training.quantize import quantize_model
from training.reference import ReferenceData, find_reference, reference_path
from wildvision.classifier import Classifier, twin_path
from wildvision.images import load_image
from wildvision.model_info import ModelInfo, OperatingPoint

__all__ = ["PULLS", "Adapted", "Anchor", "BaseCalibration", "BaseVectors", "FitSet", "ForgettingRefused", "OpenWorld",
           "OpenWorldRefused", "PullSearch", "Thresholding", "anchor_from", "check_head_parity", "fit_adapted",
           "fit_thresholds", "main", "open_world_rates", "parse_args", "reference_vectors", "start_head"]

MIN_NEW_LABEL_PHOTOS = 5  # a new label needs photos in most of the cross-validation folds to be fitted and calibrated
THIN_PROHIBITED_PHOTOS = 50  # below this, 95 % recall is set by the 2nd or 3rd weakest photo: a warning, not a refusal
# Pulls towards the base head's weights (per unit of mean loss) tried, weakest first, where anchor photos can say
# which one keeps the base's accuracy. Embeddings are pooled activations in [0, 6] over 1280 features: small weight
# changes on many features add up to large logit changes, so the pull that holds the head spans five decades.
PULLS = (1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1, 1.0, 3.0, 10.0, 30.0)
# Accuracy moves by whole photos: per source it is noise (one of Met's 229 calib photos is 0.44 %, and in the design
# set-up every pull from 0.001 to 1 lost one or two of a 118-photo half), so it bounds the pull overall only. Per
# source the bound is the mean log-loss, which moves smoothly: in the design set-up (benchmarks/adapt_simulation.py
# --design-pull) the weakest pulls raised the Met log-loss of one half of the calib vectors by 0.06-0.14 nats and lost
# 1.7-2.6 % of the other half's Met photos; +0.02 nats stopped at pulls 0.03-0.1, keeping most of the AUC gain.
DEFAULT_MAX_LOSS_INCREASE = 0.02
# A source needs this many anchor or val photos to be bounded on its own: below, one photo is more than 1 %, and in
# the design set-up single photos of 60-photo sources made the pull search jump between pulls 1000 times apart.
MIN_SOURCE_PHOTOS = 100
PLATFORM = "platform"  # the group name of the labelled photos when thresholds are bounded by them


class OpenWorldRefused(ExportRefused):
    """The thresholds would flag more of the everyday reference than allowed; nothing was written."""

    prefix = "refused"


class ForgettingRefused(ExportRefused):
    """The adapted model loses more accuracy on the base's val than a release may; nothing was written."""

    prefix = "refused"


def main(argv: Sequence[str] | None = None) -> int:
    return run_command(lambda: adapt(parse_args(argv)))


@dataclass(frozen=True)
class FitSet:
    """The photos a head is fitted on: the platform's labelled ones, then the replayed base photos."""

    embeddings: np.ndarray
    targets: np.ndarray
    weights: np.ndarray  # per photo; the labelled and the replayed photos weigh the same in total
    groups: list[str]  # cross-validation folds never split a group
    bounds: list[str]  # the group whose harmless photos a row counts in where thresholds are bounded by these rows
    labelled_samples: list[Sample]  # the platform's readable photos: the first rows

    @property
    def labelled(self) -> int:
        return len(self.labelled_samples)

    @classmethod
    def of(cls, embeddings: np.ndarray, targets: np.ndarray, weights: np.ndarray, groups: Sequence[str],
           bounds: Sequence[str] | None = None) -> FitSet:
        """Rows that are not photos of this run (a simulation's, a test's); every row bounds as one group by default."""
        return cls(embeddings, np.asarray(targets), np.asarray(weights, float), list(groups),
                   list(bounds) if bounds is not None else [PLATFORM] * len(targets), [])


@dataclass(frozen=True)
class BaseVectors:
    """Photos of the base model's own data as embeddings: from the reference file, or --base-data photos embedded."""

    embeddings: np.ndarray
    labels: np.ndarray  # str, after --relabel
    sources: np.ndarray  # str
    groups: np.ndarray  # str

    def __len__(self) -> int:
        return len(self.labels)

    def targets(self, labels: Sequence[str]) -> np.ndarray:
        return np.array([labels.index(label) for label in self.labels], dtype=np.int64)


@dataclass(frozen=True)
class OpenWorld:
    """Held-out vectors of the base's world that bound the thresholds: the reference's calib photos."""

    vectors: BaseVectors
    review_sources: frozenset[str]  # everyday sources: their harmless photos bound review (the base's choice)


@dataclass(frozen=True)
class BaseData:
    """What the base model's data gives adapt: replay, anchor, val check and the open world, each where available."""

    replay: BaseVectors | None
    anchor: BaseVectors | None  # held out of fitting: the reference's calib vectors, else other base photos
    check: BaseVectors | None
    open_world: OpenWorld | None
    replayed: dict[str, object] | None  # provenance of the replayed photos, for the model's metadata


def adapt(args: AdaptConfig) -> int:
    started = time.monotonic()
    rule = args.threshold_rule()
    base = Classifier(args.model, threads=args.threads)
    base_head = read_head(args.model)  # before any photo is read: refuse a model that cannot be adapted at once
    reference = find_reference(args.model, args.reference)
    relabel = parse_relabel(args.relabel)
    labelled, base_samples = _read_data(args.data, args.base_data, relabel)
    labels = _label_set(base.info, labelled, args.new_label)
    cache = args.work or args.out.parent / ".adapt-cache"
    data = _base_data(base, base_samples, reference, labels, relabel, args, cache)
    fit_set = _fit_set(base, labelled, data.replay, labels, cache)
    start = start_head(base_head, base.info.labels, labels)
    anchor = (anchor_from(data.anchor.embeddings, data.anchor.targets(labels), start, len(base.info.labels),
                          data.anchor.sources) if data.anchor is not None and len(data.anchor) else None)
    base_calibration = BaseCalibration(base.info.temperature, base.info.operating_points, len(base.info.labels))
    pulls = [args.stay_close] if args.stay_close is not None else PULLS if anchor else [DEFAULT_STAY_CLOSE_ALONE]
    prohibited = [label for label in labels if label in base.info.operating_points
                  or (label in args.new_label and not label.startswith(HARMLESS_PREFIX))]
    fitted = fit_adapted(fit_set, start, labels, prohibited,
                         search=PullSearch(pulls, anchor, max_forgetting=args.max_forgetting),
                         thresholding=Thresholding(rule, data.open_world, base_calibration),
                         new_labels=len(labels) - len(base.info.labels))
    head, temperature, points = fitted.head, fitted.temperature, fitted.operating_points
    if data.open_world is None:
        bounded_by = "your photos and the replayed base photos" if base_samples else "your own harmless photos only"
        print(f"note: the open world cannot be checked: {args.model.name} has no reference data "
              f"({reference_path(args.model).name}); the thresholds follow the base's flags on {bounded_by}",
              file=sys.stderr)
        if rule.review_by == "recall":
            _warn_if_thresholds_are_thin(fit_set.targets[: fit_set.labelled], labels, prohibited)
    probabilities = softmax(fitted.held_out_logits[: fit_set.labelled], temperature)
    metrics = {"split": "cross-validated", **measure(probabilities, fit_set.labelled_samples, labels, points),
               "pull": fitted.pull, "anchor_change": fitted.anchor_change, "thresholds": rule.review_by}
    if data.open_world is not None:
        metrics["open_world"] = open_world_rates(data.open_world, head, start, temperature, points, labels,
                                                 base_calibration)
        _refuse_flooding(metrics["open_world"], args)
    if data.check is not None and len(data.check):
        metrics["base_val"] = _forgetting(start, fitted, labels, base_calibration, data.check)
        _refuse_forgetting(metrics["base_val"], args)
    info = _adapted_info(base, args, labels, temperature, points, metrics, labelled, data.replayed)
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


def _base_data(
    base: Classifier, samples: list[Sample], reference: ReferenceData | None, labels: list[str],
    relabel: Mapping[str, str], args: AdaptConfig, cache: Path,
) -> BaseData:
    """Replay, anchor and val check from --base-data photos where given, else from the reference vectors; the open
    world from the reference's calib vectors."""
    open_world = calib = None
    if reference is not None:
        calib = reference_vectors(reference, "calib", labels, relabel, len(reference))
        open_world = OpenWorld(calib, frozenset(reference.open_world_sources))
    if samples:
        anchors = args.anchor_photos if reference is None else 0
        replay, anchor, check = _base_photos(samples, labels, args.base_photos, anchors, args.check_photos)
        return BaseData(_embedded(base, replay, cache), calib or _embedded(base, anchor, cache),
                        _embedded(base, check, cache), open_world, _fingerprint(replay) if replay else None)
    if reference is None:
        return BaseData(None, None, None, None, None)
    replay = reference_vectors(reference, "replay", labels, relabel, args.base_photos)
    return BaseData(replay, calib, reference_vectors(reference, "val", labels, relabel, args.check_photos), open_world,
                    {"reference": reference.model, "network": reference.network, "photos": len(replay),
                     "by_label": {str(label): int(count) for label, count in
                                  zip(*np.unique(replay.labels, return_counts=True))}})


def reference_vectors(
    reference: ReferenceData, role: str, labels: list[str], relabel: Mapping[str, str], count: int
) -> BaseVectors:
    """Up to `count` of the reference's vectors of one role, labelled as --relabel says (by their kind)."""
    rows = reference.role(role)
    names = np.array([relabel.get(kind, label) for kind, label in zip(rows.kinds, rows.labels)], dtype=str)
    unknown = sorted(set(names.tolist()) - set(labels))
    if unknown:
        raise DataError(f"the reference data has labels {unknown} that the adapted model would not have; relabel them")
    names = np.array([str(label) for label in names])
    return BaseVectors(rows.embeddings[:count], names[:count], rows.sources[:count], rows.groups[:count])


def _embedded(base: Classifier, samples: list[Sample], cache: Path) -> BaseVectors:
    features = compute_features(base, [s.path for s in samples], cache=cache / "features")
    kept = [samples[i] for i in features.kept]
    return BaseVectors(features.embeddings.reshape(len(kept), -1), np.array([s.label for s in kept], dtype=str),
                       np.array([s.source or s.dataset for s in kept], dtype=str),
                       np.array([s.group for s in kept], dtype=str))


def _base_photos(
    samples: list[Sample], labels: Sequence[str], replay_count: int, anchor_count: int, check_count: int
) -> tuple[list[Sample], list[Sample], list[Sample]]:
    """From the base data's non-val photos a replay sample and, apart from it, anchor photos; and a sample of its val
    photos."""
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
    return ranked[:count]


def _fit_set(
    base: Classifier, labelled: list[Sample], replay: BaseVectors | None, labels: list[str], cache: Path
) -> FitSet:
    features = compute_features(base, [s.path for s in labelled], cache=cache / "features")
    kept = [labelled[i] for i in features.kept]
    embeddings, targets = features.embeddings, np.array([labels.index(s.label) for s in kept], dtype=np.int64)
    groups, bounds = [s.group for s in kept], [PLATFORM] * len(kept)
    weights = np.full(len(kept), 1.0 / max(len(kept), 1))
    if replay is not None and len(replay):
        embeddings = np.concatenate([embeddings, replay.embeddings])
        targets = np.concatenate([targets, replay.targets(labels)])
        groups += [f"base:{group}" for group in replay.groups]
        bounds += [f"base:{source}" for source in replay.sources]
        weights = np.concatenate([weights, np.full(len(replay), 1.0 / len(replay))])
    return FitSet(embeddings, targets, weights, groups, bounds, kept)


@dataclass(frozen=True)
class BaseCalibration:
    """The base model's temperature, thresholds and label count: what thresholds matched to the base follow."""

    temperature: float
    operating_points: Mapping[str, OperatingPoint]
    labels: int  # the base's labels come first in the adapted model's

    def probabilities(self, start: Head, embeddings: np.ndarray) -> np.ndarray:
        """The base's calibrated scores in the adapted label order; a label the base lacks scores 0."""
        probabilities = softmax(start.logits(embeddings)[:, : self.labels], self.temperature)
        return np.pad(probabilities, ((0, 0), (0, len(start.bias) - self.labels)))


@dataclass(frozen=True)
class Adapted:
    head: Head
    temperature: float
    operating_points: dict[str, OperatingPoint]
    held_out_logits: np.ndarray  # every fitting photo scored by a head fitted without its fold
    pull: float  # the pull towards the base head that was used
    anchor_change: float | None  # accuracy change on the anchor photos (None: no anchor)


@dataclass(frozen=True)
class Anchor:
    """Base photos held out of fitting: the adapted head must keep (nearly) the base head's accuracy on them, and its
    log-loss overall and in every source with enough photos (Met's museum photos must not pay for the platform's
    gain)."""

    embeddings: np.ndarray
    targets: np.ndarray
    base_correct: np.ndarray  # per photo: the base head's top label is right
    base_loss: np.ndarray  # per photo: the base head's log-loss (nats, raw logits)
    sources: np.ndarray  # str; one value where sources are unknown

    def change(self, head: Head) -> float:
        """The accuracy change over all anchor photos."""
        correct = head.logits(self.embeddings).argmax(1) == self.targets
        return float(correct.mean() - self.base_correct.mean())

    def loss_increase(self, head: Head) -> float:
        """The worst increase of mean log-loss: overall, or in any source of at least MIN_SOURCE_PHOTOS photos."""
        return _worst_mean(_log_loss(head.logits(self.embeddings), self.targets) - self.base_loss, self.sources)

    def keeps(self, head: Head, max_forgetting: float, max_loss_increase: float) -> bool:
        return self.change(head) >= -max_forgetting and self.loss_increase(head) <= max_loss_increase


def _worst_mean(values: np.ndarray, sources: np.ndarray) -> float:
    """The largest mean of `values`: over all photos, or over any source's photos where it has enough."""
    means = [float(values.mean())]
    for source in np.unique(sources):
        member = sources == source
        if member.sum() >= MIN_SOURCE_PHOTOS:
            means.append(float(values[member].mean()))
    return max(means)


def _log_loss(logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    return -np.log(softmax(logits)[np.arange(len(targets)), targets] + 1e-12)


@dataclass(frozen=True)
class PullSearch:
    """Which pulls towards the base head to try, and what judges them: the weakest pull whose head keeps the
    `anchor`'s accuracy within `max_forgetting` and its log-loss within `max_loss_increase` is taken (every pull is
    the same to a search without an anchor, which takes the weakest)."""

    pulls: Sequence[float]
    anchor: Anchor | None = None
    max_forgetting: float = DEFAULT_MAX_FORGETTING
    max_loss_increase: float = DEFAULT_MAX_LOSS_INCREASE

    def accepts(self, head: Head) -> bool:
        return self.anchor is None or self.anchor.keeps(head, self.max_forgetting, self.max_loss_increase)


@dataclass(frozen=True)
class Thresholding:
    """How the adapted model's thresholds are fitted: the `rule`, the reference's calib vectors that bound them
    (`open_world`, where the base ships reference data), and the base's own calibration that thresholds matched to
    the base follow (`base`)."""

    rule: ThresholdRule
    open_world: OpenWorld | None = None
    base: BaseCalibration | None = None


def fit_adapted(
    fit: FitSet, start: Head, labels: Sequence[str], prohibited: Sequence[str], *, search: PullSearch,
    thresholding: Thresholding, new_labels: int = 0,
) -> Adapted:
    """The adapted head with the weakest pull the `search` accepts (the strongest where none is), its temperature and
    thresholds (`fit_thresholds`).

    The pull holds the base labels' rows; the last `new_labels` rows have nothing to forget and are only kept small
    (`DEFAULT_STAY_CLOSE`), so that a firm pull cannot stop a new label being learnt.
    """
    for pull in sorted(search.pulls):
        per_row = np.array([pull] * (len(labels) - new_labels) + [DEFAULT_STAY_CLOSE] * new_labels)
        head = fit_head(fit.embeddings, fit.targets, fit.weights, start, stay_close=per_row)
        if search.accepts(head):
            break
    anchor = search.anchor
    change = anchor.change(head) if anchor is not None else None
    if anchor is not None and not search.accepts(head):
        print(f"warning: even the strongest pull ({pull}) changes the base anchor photos' accuracy by {change:+.4f} "
              f"and log-loss by {anchor.loss_increase(head):+.4f}", file=sys.stderr)
    held_out = cross_fit(fit.embeddings, fit.targets, fit.weights, fit.groups, start, stay_close=per_row)
    temperature, points = fit_thresholds(fit, held_out, head, start, labels, prohibited, thresholding)
    return Adapted(head, temperature, points, held_out, pull, change)


def fit_thresholds(
    fit: FitSet, held_out: np.ndarray, head: Head, start: Head, labels: Sequence[str], prohibited: Sequence[str],
    thresholding: Thresholding,
) -> tuple[float, dict[str, OperatingPoint]]:
    """Temperature and thresholds on every held-out score: the fitting photos cross-validated and, where the reference
    gives them, its calib vectors scored by the final head (no head saw them). With the reference, its everyday sources
    bound review and all its sources bound block; without it, the fitting photos' own harmless ones do."""
    rule, open_world, base_calibration = thresholding.rule, thresholding.open_world, thresholding.base
    logits, targets, bounds, embeddings = [held_out], [fit.targets], list(fit.bounds), [fit.embeddings]
    if open_world is not None:
        vectors = open_world.vectors
        logits.append(head.logits(vectors.embeddings))
        targets.append(vectors.targets(labels))
        bounds += [f"reference:{source}" for source in vectors.sources]
        embeddings.append(vectors.embeddings)
        rule = replace(rule, review_groups=frozenset(f"reference:{s}" for s in open_world.review_sources),
                       block_groups=frozenset(f"reference:{s}" for s in vectors.sources))
    base = None
    if base_calibration is not None:
        base = BaseScores(base_calibration.probabilities(start, np.concatenate(embeddings)),
                          base_calibration.operating_points)
    return calibrate(np.concatenate(logits), np.concatenate(targets), bounds, labels, prohibited, rule, base=base)


def anchor_from(
    embeddings: np.ndarray, targets: np.ndarray, start: Head, base_labels: int, sources: np.ndarray | None = None
) -> Anchor:
    """An anchor whose base accuracy and log-loss are the base head's own (new labels, after the base ones, masked
    out)."""
    base_logits = start.logits(embeddings)[:, :base_labels]
    return Anchor(embeddings, targets, base_logits.argmax(1) == targets, _log_loss(base_logits, targets),
                  sources if sources is not None else np.full(len(targets), ""))


def start_head(base_head: Head, base_labels: Sequence[str], labels: Sequence[str]) -> Head:
    """The base head's rows for its labels; a new label's row starts at zero (no evidence either way)."""
    weight = np.zeros((len(labels), base_head.weight.shape[1]), np.float32)
    bias = np.zeros(len(labels), np.float32)
    for index, label in enumerate(base_labels):
        weight[labels.index(label)], bias[labels.index(label)] = base_head.weight[index], base_head.bias[index]
    return Head(weight, bias)


def open_world_rates(
    open_world: OpenWorld, head: Head, start: Head, temperature: float, points: Mapping[str, OperatingPoint],
    labels: Sequence[str], base: BaseCalibration,
) -> dict[str, object]:
    """Shares of the reference's everyday harmless photos that the adapted and the base model flag and block."""
    vectors = open_world.vectors
    everyday = np.isin(vectors.sources, sorted(open_world.review_sources)) & ~np.isin(vectors.labels, list(points))
    embeddings = vectors.embeddings[everyday]
    flagged, blocked = flag_rates(softmax(head.logits(embeddings), temperature), labels, points)
    base_flagged, base_blocked = flag_rates(base.probabilities(start, embeddings), labels, base.operating_points)
    return {"photos": int(everyday.sum()), "sources": sorted(open_world.review_sources),
            "flagged": round(flagged, 4), "blocked": round(blocked, 4),
            "base_flagged": round(base_flagged, 4), "base_blocked": round(base_blocked, 4)}


def _refuse_flooding(rates: Mapping[str, object], args: AdaptConfig) -> None:
    if rates["flagged"] > args.max_everyday_flagged and not args.allow_flagging_everyday:
        raise OpenWorldRefused(
            f"the thresholds would flag {rates['flagged']:.1%} of the {rates['photos']} reference everyday photos "
            f"(the base flags {rates['base_flagged']:.1%}), more than --max-everyday-flagged "
            f"{args.max_everyday_flagged:g}; leave --review-recall/--review-fpr out to match the base, or pass "
            "--allow-flagging-everyday to write it anyway")


def _forgetting(
    start: Head, adapted: Adapted, labels: list[str], base: BaseCalibration, check: BaseVectors
) -> dict[str, object]:
    """Accuracy of the base and the adapted model on base val vectors, overall and per source, two ways: at each
    model's top label, and at its own decision (a photo is called prohibited where its thresholds flag it), which is
    what re-fitted temperature and thresholds can cost even where the top label holds."""
    targets = check.targets(labels)
    prohibited = np.isin(check.labels, list(adapted.operating_points))
    base_probabilities = base.probabilities(start, check.embeddings)
    probabilities = softmax(adapted.head.logits(check.embeddings), adapted.temperature)
    correct = {"base": base_probabilities.argmax(1) == targets, "adapted": probabilities.argmax(1) == targets,
               "base_decision": flags(base_probabilities, labels, base.operating_points)[0] == prohibited,
               "adapted_decision": flags(probabilities, labels, adapted.operating_points)[0] == prohibited}

    def row(member: np.ndarray) -> dict[str, object]:
        rates = {name: float(values[member].mean()) for name, values in correct.items()}
        return {"photos": int(member.sum()), "base_accuracy": round(rates["base"], 4),
                "adapted_accuracy": round(rates["adapted"], 4), "change": round(rates["adapted"] - rates["base"], 4),
                "base_decision_accuracy": round(rates["base_decision"], 4),
                "decision_accuracy": round(rates["adapted_decision"], 4),
                "decision_change": round(rates["adapted_decision"] - rates["base_decision"], 4)}

    by_source = {str(source): row(check.sources == source) for source in np.unique(check.sources)}
    return {**row(np.ones(len(targets), bool)), "by_source": by_source}


def _refuse_forgetting(forgetting: Mapping[str, object], args: AdaptConfig) -> None:
    """A release may lose at most MAX_VAL_FORGETTING of accuracy at its own decision on the base's val, overall and in
    any source with enough photos to say so. The top label is reported, not bounded: it is the decision at a score of
    0.5, which re-fitted thresholds replace (on the simulated platform, 1,000 Towneley photos moved Met's top label by
    -0.028 while its decisions gained +0.032)."""
    rows = {"all": forgetting, **forgetting["by_source"]}
    changes = [(row["decision_change"], name) for name, row in rows.items() if row["photos"] >= MIN_SOURCE_PHOTOS]
    if not changes or args.allow_forgetting:
        return
    change, name = min(changes)
    if change < -MAX_VAL_FORGETTING:
        row = rows[name]
        raise ForgettingRefused(
            f"the adapted model loses {-change:.4f} accuracy at its decisions on the base's val vectors ({name}, "
            f"{row['photos']} photos: {row['base_decision_accuracy']} -> {row['decision_accuracy']}), more than "
            f"{MAX_VAL_FORGETTING}; raise the pull (--stay-close), or pass --allow-forgetting to write it anyway")


def _adapted_info(
    base: Classifier, args: AdaptConfig, labels: list[str], temperature: float,
    points: dict[str, OperatingPoint], metrics: dict[str, object], labelled: list[Sample],
    replayed: dict[str, object] | None,
) -> ModelInfo:
    data = {"labelled": _fingerprint(labelled), "replayed": replayed,
            # as `wildvision info` reads a training run's counts: every labelled photo was fitted (cross-validated)
            "by_split": {"adapted": _fingerprint(labelled)["by_label"]}}
    version = args.version or f"{base.info.version}+adapted.{data['labelled']['content_sha256'][:8]}"
    config = as_json(args)  # every option, JSON-ready, as train records its own
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


def _write(args: AdaptConfig, base: Classifier, head: Head, info: ModelInfo, labelled: list[Sample]) -> None:
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


def _print_summary(info: ModelInfo, metrics: dict[str, object], seconds: float) -> None:
    print(f"{info.full_name}: labels {list(info.labels)}, temperature {info.temperature:.3f}")
    for label, point in info.operating_points.items():
        print(f"  {label}: review {point.review:.4f}, block {point.block:.4f} (review by {metrics['thresholds']})")
    print(f"cross-validated on {metrics['photos']} labelled photos: accuracy {metrics['accuracy']}, "
          f"decisions {metrics['decisions']}")
    change = metrics["anchor_change"]
    print(f"pull towards the base head {metrics['pull']}" + (f" (anchor accuracy change {change:+.4f})"
                                                              if change is not None else " (no anchor: fixed)"))
    if "open_world" in metrics:
        rates = metrics["open_world"]
        print(f"reference everyday photos ({rates['photos']}, calib): flagged {rates['flagged']:.2%} (base "
              f"{rates['base_flagged']:.2%}), blocked {rates['blocked']:.2%} (base {rates['base_blocked']:.2%})")
    if "base_val" in metrics:
        check = metrics["base_val"]
        worst = min(check["by_source"].items(), key=lambda item: min(item[1]["change"], item[1]["decision_change"]))
        print(f"base val ({check['photos']} photos): accuracy {check['base_accuracy']} -> {check['adapted_accuracy']} "
              f"({check['change']:+.4f}), at the decision {check['base_decision_accuracy']} -> "
              f"{check['decision_accuracy']} ({check['decision_change']:+.4f}); weakest source {worst[0]} "
              f"({worst[1]['photos']}): {worst[1]['change']:+.4f}, at the decision {worst[1]['decision_change']:+.4f}")
    print(f"done in {seconds:.0f} s")


if __name__ == "__main__":
    sys.exit(main())
