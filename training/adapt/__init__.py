"""Adapt a released wildvision model to a platform's own labelled photos in minutes on a CPU.

`python -m training.adapt --model BASE.onnx --data LABELLED [--data ...] --out NEW.onnx`

The base model's network stays as it is; a new classifier head is fitted on the embeddings the base model's own graph
computes (`training.features`, cached and resumable), starting from and pulled towards the base head, and mixed back
with it, so that what the new photos do not speak to is decided as before (`training.head`). The base model's own
data comes as vectors in its reference file (`training.reference`, `NAME.reference.npz` beside the model, in the wheel
too), so a platform needs nothing but its labels: a sample of the base's training photos is replayed beside the new
ones (weighted equally in total, by the one `assemble` the benchmark calls too); every candidate (pull and mix) is
judged on the reference's `calib` vectors by one judge of forgetting (`judge`: accuracy at its own decisions, paired
with the base's, allowing for how few photos measure it); the one that gains most on the platform's photos
(cross-validated) among those the judge accepts is written, and the same verdict refuses where none is accepted.
The `val` vectors, held out of every choice, are judged the same way and reported. `--base-data` (the photos
themselves) replaces the reference's replay and val vectors. New labels (`--new-label`) get their own rows and,
unless named `not_*`, operating points.

Thresholds keep the open world by default: `review` and `block` flag no more of each reference everyday source's
photos (and block no more of any source's) than the base model does. `--review-recall` or `--review-fpr` choose
otherwise, and a model whose thresholds flag more than `--max-everyday-flagged` of the reference everyday photos is
refused unless `--allow-flagging-everyday`. A model without reference data still adapts, matched to the base on the
platform's own harmless photos, with a note that the open world cannot be checked.

Temperature and thresholds are fitted on held-out scores: every labelled and replayed photo scored by a head that
never saw it (cross-validated), and the reference calib vectors, which no head is fitted on. The output is a normal
wildvision model with its own name and a version fingerprinting its data and options, whose metadata records the
base model (name, version, digest) and the data's fingerprints; before it is written, its logits and explanations
must match the fitted head applied to the base model's embeddings on real photos (as `training.export` checks its
graphs), and `--int8` adds a checked int8 twin.

The package's modules, one job each: `inputs` (labels and the base's data), `assembly` (the fitting set), `fit`
(candidates and the choice), `judge` (forgetting), `guards` (refusals), `output` (metadata, writing, parity,
summary) and `command` (the order they run in).
"""

from training.adapt import assembly, fit, guards, inputs, judge, output  # noqa: F401  (before command, which uses them)
from training.adapt.assembly import PLATFORM, FitSet, assemble
from training.adapt.command import adapt, main
from training.adapt.fit import MIXES, PULLS, Adapted, Candidate, Search, Thresholding, blend, fit_adapted, \
    fit_thresholds, start_head
from training.adapt.guards import ForgettingRefused, OpenWorldRefused, open_world_rates
from training.adapt.inputs import BaseCalibration, BaseData, BaseVectors, OpenWorld, reference_vectors
from training.adapt.judge import DEFAULT_MAX_FORGETTING, MIN_SOURCE_PHOTOS, Change, Judge, Verdict
from training.adapt_config import DEFAULT_STAY_CLOSE_ALONE, AdaptConfig, parse_args

__all__ = ["DEFAULT_MAX_FORGETTING", "DEFAULT_STAY_CLOSE_ALONE", "MIN_SOURCE_PHOTOS", "MIXES", "PLATFORM", "PULLS",
           "AdaptConfig", "Adapted", "BaseCalibration", "BaseData", "BaseVectors", "Candidate", "Change", "FitSet",
           "ForgettingRefused", "Judge", "OpenWorld", "OpenWorldRefused", "Search", "Thresholding", "Verdict", "adapt",
           "assemble", "blend", "fit_adapted", "fit_thresholds", "main", "open_world_rates", "parse_args",
           "reference_vectors", "start_head"]
