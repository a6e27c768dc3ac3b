"""The select → label → adapt → measure loop, simulated on the shared data with Towneley as "the platform".

    python benchmarks/adapt_simulation.py [--data ../shared/data] [--cache runs/adapt-sim/features]
    python benchmarks/adapt_simulation.py --design         # how select's rule was chosen
    python benchmarks/adapt_simulation.py --design-pull    # the search and its judge on the design split
    python benchmarks/adapt_simulation.py --command        # the command itself on the strict base, 300 labels

Set-up. The strict base is EfficientNet-Lite0 with ImageNet weights (nothing of the shared data seen) and a head made
as a release is made: fitted on the non-Towneley `train` photos less a calib part (10 % of museum and clothing groups,
25 % of everyday ones, as `training/configs/ivory.toml`), temperature and thresholds fitted on that calib part by the
release rule (review: at most 0.25 % of each everyday source's harmless photos flagged; block: 0.05 % of every
source's). Its reference data is made as `training.export` makes a release's (`training.reference`: 1,000 replay
vectors from its fitting photos, its whole calib part, 700 of its `val` photos): a model that never saw Towneley and
ships what a platform gets. "The platform's" unlabelled pool is Towneley's `train` photos; every figure is measured
on Towneley's `val` photos (which neither the network nor any head saw) and on everyday `val` photos (harmless, for
false alarms), which no reference role holds except `val`, where they only measure forgetting. Forgetting is accuracy
on the base's own `val` photos (non-Towneley), overall and on Met's, at the top label and at the model's own decision
(flagged or not, against prohibited or not).

For each budget (100, 300 photos) the labelled photos are chosen by `training.select.choose` (on the base model's
scores and embeddings) or at random (five seeds), then adapted with `training.adapt.fit_adapted` four ways:
- **base data** (the run issue 24 compared with): 1,000 base training *photos* replayed and 1,000 anchoring, as
  `--base-data` did, thresholds by recall (0.95) on the cross-validated photos, as adapt's defaults were;
- **nothing** (adapt before issue 24 without `--base-data`): no replay, the fixed firm pull, thresholds by recall;
- **reference** (adapt's default now: `--data` alone): replay from the reference vectors, the pull chosen on its calib
  vectors, thresholds matched to the base's flags on its calib everyday photos;
- **reference + recall 0.95**: the same with `--review-recall 0.95`, the explicit choice, to show what it costs.
A new label (`sculpture`, a stand-in product) is added from a fully labelled pool. The same loop then runs on the
shipped network with the shipped model as the base and its shipped reference file, Towneley's vectors removed from it
(the shipped network's later blocks trained on Towneley's `train` photos, so it is no stranger there). Embeddings are
computed once through each network and cached (about five minutes per network on two cores the first time).

`--design` is where select's rule was chosen, `--design-pull` where the pull rule was checked, both apart from every
reported figure: Towneley's `train` photos alone are split by group (70 / 30, two different splits) into a design pool
and a design test, budgets scale with the pool (70 and 210 photos), and only design-test AUC and anchor accuracy (base
training or calib photos) are looked at, never Towneley `val` or base `val`.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # training/ is not installed: run from the checkout

from training.adapt import (  # noqa: E402
    DEFAULT_MAX_FORGETTING, DEFAULT_STAY_CLOSE_ALONE, MIXES, PULLS, Adapted, BaseCalibration, BaseVectors, Candidate,
    FitSet, Judge, OpenWorld, Search, Thresholding, assemble, fit_adapted, reference_vectors, start_head,
)
from training.backbone import IMAGENET_MEAN, IMAGENET_STD, build_model  # noqa: E402
from training.calibration import ThresholdRule, calibrate, flag_rates, softmax  # noqa: E402
from wildvision.decision import flags  # noqa: E402
from training.compare import Comparison, Scored, auc, compare_scores  # noqa: E402
from training.data import Sample, load_samples  # noqa: E402
from training.export import write_onnx  # noqa: E402
from training.features import compute_features  # noqa: E402
from training.head import DEFAULT_STAY_CLOSE, Head, fit_head  # noqa: E402
from training.onnx_head import network_digest, read_head, write_with_head  # noqa: E402
from training.reference import ReferenceData, choose_reference, find_reference, write_reference  # noqa: E402
from training.select import choose, confident_positives, spread_choice, typicality  # noqa: E402
from wildvision.classifier import Classifier, default_model_path  # noqa: E402
from wildvision.model_info import ModelInfo, OperatingPoint, Preprocessing  # noqa: E402

LABELS = ["ivory", "not_ivory"]
BUDGETS = (100, 300)
RANDOM_SEEDS = range(5)
REPLAY = ANCHOR = 1000  # training.adapt's --base-photos and --anchor-photos
NEW_LABEL = ("sculpture", "sculpture")  # (kind, label): a kind of the data standing in for a new product
EVERYDAY_SOURCES = frozenset({"caltech101", "clothing", "grocery", "trashnet"})  # ivory.toml's review sources
CALIB_SHARE = {"wildlife-products-v1": 0.1, "everyday-v1": 0.25}  # ivory.toml's calib fractions
RELEASE_RULE = ThresholdRule(review_fpr=0.0025, block_fpr=0.0005, review_groups=EVERYDAY_SOURCES)  # ivory.toml's
RECALL_RULE = ThresholdRule(review_recall=0.95, block_fpr=0.005)  # adapt's defaults before issue 24
MATCHED = ThresholdRule()  # adapt's default now: review and block follow the base's flags on the reference
# A new label has no base flags to follow: its review is set by a share of the everyday reference it may flag.
NEW_LABEL_RULE = ThresholdRule(review_fpr=0.01)


@dataclass(frozen=True)
class World:
    """One network's embeddings of the shared data, their parts, the base model and its reference data."""

    samples: list[Sample]
    embeddings: np.ndarray
    parts: dict[str, list[int]]
    base: Candidate | Adapted  # what the base decides: its head, temperature and thresholds
    reference: ReferenceData

    def calibration(self) -> BaseCalibration:
        return BaseCalibration(self.base.temperature, self.base.operating_points, len(LABELS))


def main(argv: Sequence[str] | None = None) -> None:
    args = _parse(argv)
    imagenet = _imagenet_network(args.cache.parent / "imagenet-lite0.onnx")
    if args.design or args.design_pull:
        world = _strict_world(imagenet, args)
        (design if args.design else design_pull)(world)
        return
    if args.command:
        world = _strict_world(imagenet, args)
        base = args.cache.parent / "base-without-towneley.onnx"
        _write_base(imagenet, world, base)
        through_the_command(world, base, args.cache.parent / "command")
        return
    print("== the ImageNet network: nothing of the shared data seen (the strict simulation)")
    world = _strict_world(imagenet, args)
    _write_base(imagenet, world, args.cache.parent / "base-without-towneley.onnx")
    simulate(world)
    print("\n== the shipped model and its shipped reference, Towneley's vectors removed (its network trained on "
          "Towneley train photos)")
    simulate(_shipped_world(args))


def simulate(world: World) -> None:
    """The table for one world: each budget, each way of adapting; then a new label."""
    started = time.monotonic()
    samples, embeddings, parts = world.samples, world.embeddings, world.parts
    print("photos: " + ", ".join(f"{name} {len(idx)}" for name, idx in parts.items())
          + f"; reference {world.reference.counts()}")
    rows = [_measure("base (head without Towneley)", world.base, world)]
    base_probabilities = softmax(world.base.head.logits(embeddings[parts["pool"]]), world.base.temperature)
    for budget in BUDGETS:
        chosen = [parts["pool"][c.index] for c in choose(embeddings[parts["pool"]], base_probabilities, [0], budget)]
        ivory = sum(samples[i].label == "ivory" for i in chosen)
        for way in WAYS:
            rows.append(_measure(f"select {budget} ({ivory} ivory), {way}", _adapt(world, chosen, way), world))
        rows.append(_random_rows(budget, world))
    _print_table(rows)
    _new_label(world)
    print(f"simulation took {time.monotonic() - started:.0f} s (embeddings cached)")


def _strict_world(network: Classifier, args: argparse.Namespace) -> World:
    """The ImageNet network, a base head made as a release is, and its reference made as export makes one."""
    samples, embeddings = _embedded(network, args.data, args.cache)
    parts = _parts(samples)
    fit_rows, calib_rows = _release_split(samples, parts["base_train"])
    start = Head(np.zeros((len(LABELS), embeddings.shape[1]), np.float32), np.zeros(len(LABELS), np.float32))
    targets = _targets(samples, fit_rows)
    head = fit_head(embeddings[fit_rows], targets, np.ones(len(fit_rows)), start, stay_close=DEFAULT_STAY_CLOSE)
    temperature, points = calibrate(head.logits(embeddings[calib_rows]), _targets(samples, calib_rows),
                                    [samples[i].source for i in calib_rows], LABELS, ["ivory"], RELEASE_RULE)
    base = Candidate(DEFAULT_STAY_CLOSE, 1.0, head, temperature, points, np.zeros((0, len(LABELS))), float("nan"),
                     None)
    split = {**{i: "train" for i in fit_rows}, **{i: "calib" for i in calib_rows},
             **{i: "val" for i in parts["base_val"]}}
    return World(samples, embeddings, parts, base, _reference(network, samples, embeddings, split))


def _shipped_world(args: argparse.Namespace) -> World:
    """The shipped model as the base, with its shipped reference less Towneley's vectors."""
    path = default_model_path()
    shipped = Classifier(path)
    samples, embeddings = _embedded(shipped, args.data, args.cache)
    base = Candidate(0.0, 1.0, read_head(path), shipped.info.temperature, dict(shipped.info.operating_points),
                     np.zeros((0, len(LABELS))), float("nan"), None)
    reference = find_reference(path)
    if reference is None:
        raise SystemExit(f"no reference data beside {path}: write it with python -m training.reference")
    return World(samples, embeddings, _parts(samples), base, reference.without_sources(["towneley"]))


def _release_split(samples: list[Sample], rows: list[int]) -> tuple[list[int], list[int]]:
    """The base's training rows split into fitting and calib rows by group, with ivory.toml's calib shares."""
    calib = [i for i in rows if _bucket("calib", samples[i].group) < CALIB_SHARE[samples[i].dataset]]
    chosen = set(calib)
    return [i for i in rows if i not in chosen], calib


def _reference(network: Classifier, samples: list[Sample], embeddings: np.ndarray, split: dict[int, str]
               ) -> ReferenceData:
    """The reference `training.reference` would write for the base, from the cached embeddings."""
    row_of = {samples[i].path: i for i in split}
    chosen = choose_reference([replace(samples[i], split=part) for i, part in split.items()])
    rows = [row_of[sample.path] for sample, _ in chosen]
    column = {"labels": [samples[i].label for i in rows], "kinds": [samples[i].kind for i in rows],
              "sources": [samples[i].source for i in rows], "groups": [samples[i].group for i in rows],
              "roles": [role for _, role in chosen]}
    # float16, as the written file holds them: matched thresholds sit at the scores of the one or two most
    # ivory-like everyday photos, and float32 vectors moved them far enough to change Towneley's ivory flagged from
    # 0.45 (the command, reading the file) to 0.175 (the simulation) on the same 300 photos
    vectors = embeddings[rows].astype(np.float16).astype(np.float32)
    return ReferenceData(vectors, **{k: np.array(v, dtype=str) for k, v in column.items()},
                         network=network_digest(network.model_path), model="simulation-base@0.1.0",
                         open_world_sources=tuple(sorted(EVERYDAY_SOURCES)))


def _imagenet_network(path: Path) -> Classifier:
    """EfficientNet-Lite0 with its ImageNet weights as a wildvision model file (224 px; the head is fitted later)."""
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        info = ModelInfo(name="imagenet-lite0", version="0.0.0", labels=tuple(LABELS),
                         preprocessing=Preprocessing(224, "squash", IMAGENET_MEAN, IMAGENET_STD), temperature=1.0,
                         operating_points={"ivory": OperatingPoint(0.5, 0.9)},
                         notes="ImageNet network with an untrained head: the simulation's Towneley-blind starting point")
        write_onnx(build_model("tf_efficientnet_lite0", len(LABELS)), info, path)
    return Classifier(path)


def _write_base(network: Classifier, world: World, path: Path) -> None:
    """The Towneley-blind base as a model file with its reference beside it, for running training.adapt and
    training.compare on it as a platform would."""
    base = world.base
    info = replace(network.info, name="simulation-base", version="0.1.0", temperature=base.temperature,
                   operating_points=base.operating_points,
                   notes="simulation base: ImageNet network, head fitted on the shared data without Towneley")
    write_with_head(network.model_path, base.head, info, path)
    write_reference(world.reference, path.with_name(path.stem + ".reference.npz"))
    print(f"wrote {path} and its reference")


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--cache", type=Path, default=Path("runs/adapt-sim/features"))
    parser.add_argument("--design", action="store_true",
                        help="compare selection rules on the design split of Towneley's train photos only")
    parser.add_argument("--design-pull", action="store_true",
                        help="the search and its judge (reference replay) on the design split of Towneley's train "
                             "photos")
    parser.add_argument("--command", action="store_true",
                        help="run python -m training.adapt itself on the strict base with 300 selected Towneley "
                             "photos, by default and with --allow-forgetting, and measure what it wrote")
    return parser.parse_args(argv)


def _embedded(model: Classifier, data: Path, cache: Path) -> tuple[list[Sample], np.ndarray]:
    samples = []
    for name in ("wildlife-products-v1", "everyday-v1"):
        samples += [replace(s, dataset=name) for s in load_samples(data / name)]
    features = compute_features(model, [s.path for s in samples], cache=cache)
    return [samples[i] for i in features.kept], features.embeddings


def _parts(samples: list[Sample]) -> dict[str, list[int]]:
    """Index lists: the base's training and val photos (and Met's val), the platform's pool and test photos, everyday
    val photos."""
    towneley = [s.source == "towneley" for s in samples]
    return {
        "base_train": [i for i, s in enumerate(samples) if not towneley[i] and s.split == "train"],
        "base_val": [i for i, s in enumerate(samples) if not towneley[i] and s.split == "val"],
        "met_val": [i for i, s in enumerate(samples) if s.source == "met" and s.split == "val"],
        "pool": [i for i, s in enumerate(samples) if towneley[i] and s.split == "train"],
        "test": [i for i, s in enumerate(samples) if towneley[i] and s.split == "val"],
        "everyday_val": [i for i, s in enumerate(samples) if s.dataset == "everyday-v1" and s.split == "val"],
    }


def _targets(samples: list[Sample], rows: Sequence[int], label_of=lambda s: s.label, labels=LABELS) -> np.ndarray:
    return np.array([labels.index(label_of(samples[i])) for i in rows], dtype=np.int64)


def _replay(samples: list[Sample], candidates: list[int]) -> tuple[list[int], list[int]]:
    """The replay and anchor photos `training.adapt` draws from --base-data photos: ranked by a hash of the path."""
    ranked = sorted(candidates, key=lambda i: hashlib.sha256(str(samples[i].path).encode()).hexdigest())
    return ranked[:REPLAY], ranked[REPLAY : REPLAY + ANCHOR]


WAYS = ("base data", "nothing", "reference", "reference + recall 0.95")


def _adapt(world: World, chosen: list[int], way: str, *, labels: Sequence[str] = LABELS, label_of=lambda s: s.label,
           rule: ThresholdRule | None = None, pulls: Sequence[float] = PULLS, mixes: Sequence[float] = MIXES,
           max_forgetting: float = DEFAULT_MAX_FORGETTING, weights: np.ndarray | None = None,
           allow_forgetting: bool = False, judged: BaseVectors | None = None) -> Adapted:
    """A head adapted on the labelled rows `chosen` (weighted by `weights`, else equally) as training.adapt adapts
    one, the given way (one of WAYS): the fitting set from `assemble`, the search and its judge from `fit_adapted`, the
    functions the command calls."""
    samples, embeddings = world.samples, world.embeddings
    labels = list(labels)
    targets, groups = _targets(samples, chosen, label_of, labels), [samples[i].group for i in chosen]
    start = start_head(world.base.head, LABELS, labels)
    relabel = {NEW_LABEL[0]: NEW_LABEL[1]} if len(labels) > len(LABELS) else {}
    rule = rule or (RECALL_RULE if way in ("base data", "nothing") else
                    ThresholdRule(review_recall=0.95) if way.endswith("recall 0.95") else MATCHED)
    new_labels = len(labels) - len(LABELS)
    if way == "nothing":
        return fit_adapted(assemble(embeddings[chosen], targets, groups, None, labels, weights=weights), start, labels,
                           _prohibited(labels), search=Search((DEFAULT_STAY_CLOSE_ALONE,)),
                           thresholding=Thresholding(rule), new_labels=new_labels)
    if way == "base data":
        replay_rows, judged_rows = _replay(samples, world.parts["base_train"])
        replay, judged = (BaseVectors(embeddings[rows], np.array([label_of(samples[i]) for i in rows]),
                                      np.array([samples[i].source for i in rows]),
                                      np.array([samples[i].group for i in rows]))
                          for rows in (replay_rows, judged_rows))
        judge = Judge.of("base photos", judged, labels, _prohibited(labels), start, world.calibration(),
                         max_forgetting)
        return fit_adapted(assemble(embeddings[chosen], targets, groups, replay, labels, weights=weights), start,
                           labels, _prohibited(labels), thresholding=Thresholding(rule), new_labels=new_labels,
                           search=Search(pulls, mixes, judge, allow_forgetting))
    reference = world.reference
    replay = reference_vectors(reference, "replay", labels, relabel, REPLAY)
    calib = reference_vectors(reference, "calib", labels, relabel, len(reference))  # as adapt's judge and open world
    judge = Judge.of("calib", judged if judged is not None else calib, labels, _prohibited(labels), start, world.calibration(), max_forgetting)
    return fit_adapted(assemble(embeddings[chosen], targets, groups, replay, labels, weights=weights), start, labels,
                       _prohibited(labels), search=Search(pulls, mixes, judge, allow_forgetting),
                       thresholding=Thresholding(rule, OpenWorld(calib, frozenset(reference.open_world_sources)),
                                                 world.calibration()),
                       new_labels=new_labels)


COMMAND_BUDGET = 300  # labelled photos for --command: the budget the "done" is stated at


def through_the_command(world: World, base: Path, work: Path) -> None:
    """`python -m training.adapt` as a platform runs it (the base model file, its reference beside it, a CSV of
    `select`'s choice with the true labels), by default and with --allow-forgetting; each written model is measured
    on Towneley val and everyday val from its own head and thresholds (its network is the base's, so the cached
    embeddings are its embeddings). The first run embeds the labelled photos (cold cache); the second reuses them."""
    from training.adapt import main as adapt_main

    samples, parts = world.samples, world.parts
    work.mkdir(parents=True, exist_ok=True)
    probabilities = softmax(world.base.head.logits(world.embeddings[parts["pool"]]), world.base.temperature)
    chosen = [parts["pool"][c.index] for c in choose(world.embeddings[parts["pool"]], probabilities, [0],
                                                     COMMAND_BUDGET)]
    labels_csv = work / f"select_{COMMAND_BUDGET}.csv"
    labels_csv.write_text("path,label,group\n" + "".join(f"{samples[i].path.resolve()},{samples[i].label},"
                                                         f"{samples[i].group}\n" for i in chosen))
    rows = [_measure("base (head without Towneley)", world.base, world)]
    for name, extra in (("default", []), ("--allow-forgetting", ["--allow-forgetting"])):
        out = work / f"adapted-{name.strip('-')}.onnx"
        started = time.monotonic()
        assert adapt_main(["--model", str(base), "--data", str(labels_csv), "--out", str(out), "--work",
                           str(work / "cache"), *extra]) == 0, f"adapt {name} wrote nothing"
        seconds = time.monotonic() - started
        model = Classifier(out)
        written = Candidate(model.info.metrics["pull"], model.info.metrics["mix"], read_head(out),
                            model.info.temperature, dict(model.info.operating_points), np.zeros((0, len(LABELS))),
                            float("nan"), None)
        val = model.info.metrics["base_val"]
        print(f"{name}: {model.info.version} in {seconds:.0f} s; judged on calib: "
              f"{model.info.metrics['forgetting']['decision_change']:+.4f} (accepted "
              f"{model.info.metrics['forgetting']['accepted']}); reference val (held out): "
              f"{val['decision_change']:+.4f}, Met {val['by_source'].get('met', {}).get('decision_change')}")
        rows.append(_measure(f"command, {name} ({seconds:.0f} s)", written, world))
    ivory = sum(samples[i].label == "ivory" for i in chosen)
    print(f"\n{COMMAND_BUDGET} photos chosen by select ({ivory} ivory)")
    _print_table(rows)


def _prohibited(labels: Sequence[str]) -> list[str]:
    return [label for label in labels if label != "not_ivory"]


def _measure(name: str, model: Adapted, world: World, labels: Sequence[str] = LABELS, label_of=lambda s: s.label
             ) -> dict:
    """Per-label figures on Towneley val and flag rates on its harmless photos and on everyday val (at the model's
    own thresholds), the reference's calib everyday photos flagged, and base val and Met val accuracy."""
    samples, embeddings, parts = world.samples, world.embeddings, world.parts
    towneley = _compared(name, model, world, parts["test"], labels, label_of)
    everyday = _compared(name, model, world, parts["everyday_val"], labels, label_of)
    reference = world.reference.role("calib")
    harmless = np.isin(reference.sources, list(reference.open_world_sources)) & (reference.labels == "not_ivory")
    reference_flagged = flag_rates(softmax(model.head.logits(reference.embeddings[harmless]), model.temperature),
                                   list(labels), model.operating_points)[0]
    accuracy = {}
    for part in ("base_val", "met_val"):
        rows = parts[part]
        targets = _targets(samples, rows, label_of, list(labels))
        probabilities = softmax(model.head.logits(embeddings[rows]), model.temperature)
        prohibited = np.isin(targets, [list(labels).index(label) for label in model.operating_points])
        accuracy[part] = float((probabilities.argmax(1) == targets).mean())
        # at the model's own decision: a photo is called prohibited where its thresholds flag it
        accuracy[f"{part}_decision"] = float((flags(probabilities, list(labels), model.operating_points)[0]
                                              == prohibited).mean())
    return {"name": name, "per_label": towneley.per_label, "pull": f"{model.pull:g} x {model.mix:g}",
            "towneley_flagged": towneley.harmless["all"]["flagged"][0],
            "everyday_flagged": everyday.harmless["all"]["flagged"][0], "reference_flagged": reference_flagged,
            **accuracy}


def _compared(name: str, model: Adapted, world: World, chosen: list[int], labels: Sequence[str], label_of
              ) -> Comparison:
    """The model's scores of `chosen` at its own thresholds (compared with themselves)."""
    probabilities = softmax(model.head.logits(world.embeddings[chosen]), model.temperature)
    own = Scored(name, tuple(labels), probabilities, model.operating_points)
    return compare_scores([replace(world.samples[i], label=label_of(world.samples[i])) for i in chosen], own, own)


def _random_rows(budget: int, world: World) -> dict:
    """Random choice at the same budget, adapted the default way (reference), averaged over seeds."""
    runs, ivory = [], []
    for seed in RANDOM_SEEDS:
        chosen = list(np.random.default_rng(seed).choice(world.parts["pool"], budget, replace=False))
        ivory.append(sum(world.samples[i].label == "ivory" for i in chosen))
        runs.append(_measure("", _adapt(world, chosen, "reference"), world))
    aucs = [run["per_label"]["ivory"]["auc"][0] for run in runs]
    summary = dict(runs[0], name=f"random {budget} ({np.mean(ivory):.0f} ivory), reference, mean of {len(runs)}")
    summary["per_label"] = {"ivory": {**runs[0]["per_label"]["ivory"], "auc": (float(np.mean(aucs)), None),
                                      "recall_flagged": _mean_pair(runs, "recall_flagged"),
                                      "recall_blocked": _mean_pair(runs, "recall_blocked")}}
    for key in ("towneley_flagged", "everyday_flagged", "reference_flagged", "base_val", "met_val", "base_val_decision",
                "met_val_decision"):
        summary[key] = float(np.mean([r[key] for r in runs]))
    summary["auc_range"] = (min(aucs), max(aucs))
    pulls = [run["pull"] for run in runs]
    summary["pull"] = ", ".join(sorted(set(pulls)))  # pull x mix of each run
    return summary


def _mean_pair(runs: list[dict], key: str) -> tuple[float, float]:
    return tuple(float(np.mean([r["per_label"]["ivory"][key][k] for r in runs])) for k in (0, 1))


def _print_table(rows: list[dict]) -> None:
    base = rows[0]
    print(f"\nTowneley val ({base['per_label']['ivory']['photos']} ivory photos): ivory AUC; at the model's own "
          "thresholds: ivory flagged / blocked, Towneley harmless flagged, everyday val flagged, reference calib "
          "everyday flagged (the set the matched thresholds are fitted on); base val and Met val accuracy (change) at "
          "the top label | at the model's decision")
    print(f"{'model':<52} {'AUC':>6}  {'ivory fl / bl':>13}  {'Towneley':>8}  {'everyday':>8}  {'ref cal':>7}  "
          f"{'base val':>34}  {'Met val':>34}  pull")
    for row in rows:
        ivory = row["per_label"]["ivory"]
        spread = f" [{row['auc_range'][0]:.3f}-{row['auc_range'][1]:.3f}]" if "auc_range" in row else ""
        print(f"{row['name']:<52} {ivory['auc'][0]:.3f}  {ivory['recall_flagged'][0]:.3f} / "
              f"{ivory['recall_blocked'][0]:.3f}  {row['towneley_flagged']:>8.1%}  {row['everyday_flagged']:>8.1%}  "
              f"{row['reference_flagged']:>7.1%}  {_accuracies(row, base, 'base_val')}  "
              f"{_accuracies(row, base, 'met_val')}  {row['pull']}{spread}")


def _accuracies(row: dict, base: dict, part: str) -> str:
    decision = f"{part}_decision"
    return (f"{row[part]:.4f} ({row[part] - base[part]:+.4f}) | {row[decision]:.4f} "
            f"({row[decision] - base[decision]:+.4f})")


def _new_label(world: World) -> None:
    """A new prohibited label from a fully labelled pool: the platform labels every pool photo of the kind."""
    kind, label = NEW_LABEL
    labels = LABELS + [label]

    def label_of(sample: Sample) -> str:
        return label if sample.kind == kind else sample.label

    model = _adapt(world, world.parts["pool"], "reference", labels=labels, label_of=label_of, rule=NEW_LABEL_RULE)
    row = _measure(f"new label {label}", model, world, labels, label_of)
    new, ivory = row["per_label"][label], row["per_label"]["ivory"]
    point = model.operating_points[label]
    pool = sum(label_of(world.samples[i]) == label for i in world.parts["pool"])
    print(f"\nnew label '{label}' (kind {kind}): {pool} labelled pool photos, reference replay, --review-fpr "
          f"{NEW_LABEL_RULE.review_fpr}; on Towneley val ({new['photos']} {label} photos): AUC {new['auc'][0]}, "
          f"flagged {new['recall_flagged'][0]}, blocked {new['recall_blocked'][0]} at review {point.review:.3f} / "
          f"block {point.block:.3f}; ivory AUC {ivory['auc'][0]}; everyday val flagged {row['everyday_flagged']:.1%}; "
          f"base val accuracy {row['base_val']:.4f} (at the decision {row['base_val_decision']:.4f}), Met val "
          f"{row['met_val']:.4f} ({row['met_val_decision']:.4f})")


DESIGN_SHARE = 0.7  # of Towneley's train groups form the design pool; the rest is the design test
DESIGN_SPLITS = ("design-a", "design-b")  # two group splits, so that one lucky split cannot decide


def design(world: World) -> None:
    """Selection rules against random choice on Towneley *train* photos alone, split by group into a design pool and
    a design test: the rule is chosen here, so the reported figures (Towneley val) never take part in choosing it.

    The base is the one the rule was chosen with: a head on every non-Towneley train photo, calibrated by cross-fitting;
    photos are adapted with --base-data photos replayed (the anchor now bounds each source too, which may move a pull).
    """
    samples, embeddings = world.samples, world.embeddings
    zero = Head(np.zeros((len(LABELS), embeddings.shape[1]), np.float32), np.zeros(len(LABELS), np.float32))
    rows = world.parts["base_train"]
    base = fit_adapted(FitSet.of(embeddings[rows], _targets(samples, rows), np.ones(len(rows)),
                                 [samples[i].group for i in rows]), zero, LABELS, ["ivory"],
                       search=Search((DEFAULT_STAY_CLOSE,)), thresholding=Thresholding(RECALL_RULE))
    world = replace(world, base=base)
    for salt, pool, test in _design_splits(world):
        probabilities = softmax(base.head.logits(embeddings[pool]), base.temperature)
        pool_mix = probabilities.mean(axis=0)
        ivory = sum(samples[i].label == "ivory" for i in pool)
        print(f"\n{salt}: pool {len(pool)} ({ivory} ivory; base estimate {pool_mix[0] * len(pool):.0f}), test "
              f"{len(test)} ({sum(samples[i].label == 'ivory' for i in test)} ivory); base AUC "
              f"{_auc(base, embeddings, samples, test):.3f}")
        for budget in (round(DESIGN_SHARE * b) for b in BUDGETS):
            for name, rule in DESIGN_RULES.items():
                picked = [pool[i] for i in rule(embeddings[pool], probabilities, budget)]
                for weighted in (False, True):
                    weights = _mix_weights(_targets(samples, picked), pool_mix) if weighted else None
                    model = _adapt(world, picked, "base data", weights=weights)
                    print(f"  {budget:>3} {name + (' + mix weights' if weighted else ''):<72} ivory "
                          f"{sum(samples[i].label == 'ivory' for i in picked):>3}  AUC "
                          f"{_auc(model, embeddings, samples, test):.3f}  pull {model.pull:g}")
            aucs = [_auc(_adapt(world, list(rng.choice(pool, budget, replace=False)), "base data"), embeddings,
                         samples, test) for rng in (np.random.default_rng(seed) for seed in RANDOM_SEEDS)]
            print(f"  {budget:>3} {'random, mean of ' + str(len(aucs)):<72}           AUC {np.mean(aucs):.3f} "
                  f"[{min(aucs):.3f}-{max(aucs):.3f}]")


def design_pull(world: World) -> None:
    """The search and its judge on the design split, with the strict base's reference replayed as adapt replays it
    with nothing but labels. The calib vectors are halved by group: half A is the judge's, half B shows what the
    chosen candidate costs apart from it, judged the same way (overall, and Met's share). Design-test AUC and these
    only: never Towneley val or base val."""
    samples, embeddings, base = world.samples, world.embeddings, world.base
    calib = reference_vectors(world.reference, "calib", LABELS, {}, len(world.reference))
    half = np.array([_bucket("half", group) < 0.5 for group in calib.groups])
    a, b = (BaseVectors(calib.embeddings[m], calib.labels[m], calib.sources[m], calib.groups[m]) for m in (half, ~half))
    judge_b = Judge.of("calib B", b, LABELS, ["ivory"], base.head, world.calibration())
    for salt, pool, test in _design_splits(world):
        probabilities = softmax(base.head.logits(embeddings[pool]), base.temperature)
        print(f"\n{salt}: pool {len(pool)}, test {len(test)} ({sum(samples[i].label == 'ivory' for i in test)} "
              f"ivory); base AUC {_auc(base, embeddings, samples, test):.3f}")
        for budget in (round(DESIGN_SHARE * b) for b in BUDGETS):
            picked = [pool[c.index] for c in choose(embeddings[pool], probabilities, [0], budget)]
            for name, allow in (("judged (default)", False), ("forced (--allow-forgetting)", True)):
                model = _adapt(world, picked, "reference", judged=a, allow_forgetting=allow)
                on_b = judge_b.verdict(model.head, model.temperature, model.operating_points)
                met = next((c for c in on_b.changes if c.group == "met"), None)
                print(f"  {budget:>3} {name:<28} pull {model.pull:<6g} mix {model.mix:<5g} AUC "
                      f"{_auc(model, embeddings, samples, test):.3f}  A: {model.verdict.worst.group} "
                      f"{model.verdict.worst.change:+.4f} (bound {model.verdict.worst.upper:+.4f})  B: "
                      f"{on_b.changes[0].change:+.4f}" + (f", Met {met.change:+.4f} ({met.photos})" if met else ""))


def _design_splits(world: World):
    """(name, pool rows, test rows) for each design split of Towneley's train photos, by group."""
    for salt in DESIGN_SPLITS:
        in_pool = [_bucket(salt, world.samples[i].group) < DESIGN_SHARE for i in world.parts["pool"]]
        yield (salt, [i for i, keep in zip(world.parts["pool"], in_pool) if keep],
               [i for i, keep in zip(world.parts["pool"], in_pool) if not keep])


def _bucket(salt: str, group: str) -> float:
    """A stable number in [0, 1) per group: a design split by object, never by photo."""
    return int.from_bytes(hashlib.sha256(f"{salt}:{group}".encode()).digest()[:8], "big") / 2**64


def _auc(model, embeddings: np.ndarray, samples: list[Sample], test: list[int]) -> float:
    scores = softmax(model.head.logits(embeddings[test]), model.temperature)[:, 0]
    return auc(scores, np.array([samples[i].label == "ivory" for i in test]))


def _mix_weights(targets: np.ndarray, pool_mix: np.ndarray) -> np.ndarray:
    """Per-photo weights (summing to 1) under which the labelled photos' label mix is the pool's estimated one."""
    counts = np.bincount(targets, minlength=len(pool_mix)).astype(float)
    share = pool_mix[targets] / counts[targets]
    return share / share.sum()


def _positives_then(rule, share: float = 0.1):
    """A candidate: `rule` (embeddings, margins, count -> rows) chooses the photos left after a slice (`share`) of
    confident positives, taken as `choose` takes them."""
    def chosen(embeddings: np.ndarray, probabilities: np.ndarray, count: int) -> list[int]:
        taken = confident_positives(embeddings, probabilities[:, 0], round(count * share))
        rest = np.setdiff1d(np.arange(len(probabilities)), taken)
        ordered = np.sort(probabilities[rest], axis=1)
        margin = ordered[:, -1] - ordered[:, -2]  # 0: a coin toss
        return taken.tolist() + rest[rule(embeddings[rest], margin, count - len(taken))].tolist()
    return chosen


def _uncertain_quarter(embeddings: np.ndarray, margin: np.ndarray, count: int) -> np.ndarray:
    """The select this replaced: the least sure quarter of the pool, one per cluster, the least sure of each."""
    doubtful = np.argsort(margin)[: 4 * count]
    return doubtful[spread_choice(embeddings[doubtful], margin[doubtful], count)]


def _ranks(values: np.ndarray) -> np.ndarray:
    return np.argsort(np.argsort(values))


# The candidates compared by --design, each with and without mix weights (round one: the first three, round two: the
# rest). The last is `choose` as it now stands (TypiClust: whole pool, most typical per cluster, no positives).
DESIGN_RULES = {
    "uncertain quarter, one per cluster (old)": _positives_then(_uncertain_quarter),
    "whole pool, least sure per cluster": _positives_then(lambda e, m, n: spread_choice(e, m, n)),
    "whole pool, most typical per cluster": _positives_then(lambda e, m, n: spread_choice(e, -typicality(e), n)),
    "whole pool, random per cluster": _positives_then(
        lambda e, m, n: spread_choice(e, np.random.default_rng(0).random(len(e)), n)),
    "whole pool, typical and unsure per cluster": _positives_then(
        lambda e, m, n: spread_choice(e, _ranks(m) + _ranks(-typicality(e)), n)),
    "whole pool, most typical per cluster, no positives (select)":
        lambda e, p, n: [c.index for c in choose(e, p, [0], n)],
}


if __name__ == "__main__":
    main()
