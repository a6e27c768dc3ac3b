"""Where int8 loses ranking, and which quantisation keeps it: measured on Towneley, held out of everything.

    python benchmarks/int8_loss.py [--run runs/keep-pretrained] [--candidate l2-sp] [--probe-share 0]

Takes a candidate trained by `benchmarks/keep_pretrained.py` (every Towneley photo held out of its training,
calibration and val), exports it as the release would (`training.export.write_onnx`, temperature and thresholds fitted
on calib by the release rule), and quantises it several ways. Each int8 file scores every Towneley photo through the
library, as a platform would; the figure is the loss of Towneley ROC-AUC (ivory against everything else Towneley
shows) from the float file's. Also prints, for the release recipe's quantisation, the error each quantised tensor adds
(onnxruntime's `qdq_loss_debug`: signal-to-quantisation-noise per activation, worst first), which names the layers that
cost the loss before a remedy is chosen.

Ways compared (per-channel 7-bit int8 weights, uint8 activations, QDQ, as `training.quantize`, unless named):
- `labels`: 1.2.0's recipe, calibration photos spread over the labels of the calib split;
- `sources`: calibration photos spread over the calib split's sources, the open world as much as the museum;
- `sources + float head`: as `sources`, the layers after the last block (1x1 head convolution, classifier) kept in
  float;
- `sources + float last block`: as `sources`, the last block kept in float too;
- `sources, percentile`: activation ranges at the 99.999th percentile instead of the min-max (slow: a histogram of
  every tensor);
- `sources + float stem, block 0` / `blocks 0-1`: the front kept in float (the export default since this study);
- `sources, uint8 weights` / `8-bit int8 weights (VNNI)`: full 8-bit weights, unsigned or signed.
`--ways NAME...` runs some of them. Needs ../shared/data and the candidate's finished training state (`keep_pretrained.py --train NAME`).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # training/ is not installed: run from the checkout
sys.path.insert(0, str(Path(__file__).resolve().parent))

import keep_pretrained  # noqa: E402
from training.backbone import build_model, split_model  # noqa: E402
from training.calibration import calibrate  # noqa: E402
from training.data import Sample, spread  # noqa: E402
from training.export import write_onnx  # noqa: E402
from training.metrics import auc  # noqa: E402
from training.pretrained import TwoTailNetwork, set_head  # noqa: E402
from training.quantize import float_front, quantize_model  # noqa: E402
from wildvision.classifier import Classifier  # noqa: E402
from wildvision.images import load_image  # noqa: E402
from wildvision.model_info import ModelInfo, OperatingPoint  # noqa: E402

CALIBRATION_PHOTOS = 200  # the release's --int8-calibration-photos
PARITY_PHOTOS = 64
BATCH = 16
# After the last block: the 1x1 head convolution (its batch norm fused in, so the exporter names it `bn2`) and the
# classifier; pooling and the activation map are float in every way.
HEAD = ("bn2", "classifier")
STEM = float_front(1)  # the stem and block 0: the SQNR falls most steeply there (28 dB after the stem, 13 after block 0)
SQNR_PHOTOS = 8  # every activation of every layer is kept for these: a few photos, or gigabytes
TIMED_PHOTOS = 24  # one at a time, float32 timed again beside each int8 file: the machine is shared and noisy


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse(argv)
    torch.set_num_threads(args.threads)
    setting = keep_pretrained._setting(argparse.Namespace(config=args.config, run=args.run, threads=args.threads))
    if not keep_pretrained._finished(setting, args.candidate):
        print(f"{args.candidate} has not finished training: python benchmarks/keep_pretrained.py --train "
              f"{args.candidate}", file=sys.stderr)
        return 2
    network = _network(setting, args.candidate, args.probe_share)
    towneley = [s for s in setting.samples if s.split == keep_pretrained.HELD_OUT]
    ivory = np.array([s.label == "ivory" for s in towneley])
    photos = [load_image(s.path, min_side=setting.config.image_size) for s in towneley]
    calib = [s for s in setting.samples if s.split == "calib"]
    with tempfile.TemporaryDirectory() as scratch:
        float_path = Path(scratch) / "float.onnx"
        write_onnx(network, _model_info(setting, network), float_path)
        float_scores = _ivory_scores(Classifier(float_path), photos)
        float_auc = auc(float_scores, ivory)
        print(f"{args.candidate} (probe share {args.probe_share}): {len(towneley)} Towneley photos, {ivory.sum()} ivory; "
              f"float32 AUC {float_auc:.4f}")
        by_labels = spread(calib, CALIBRATION_PHOTOS)
        by_sources = _spread_over_sources(calib, CALIBRATION_PHOTOS)
        parity = [load_image(s.path) for s in spread([s for s in calib if s not in set(by_sources + by_labels)],
                                                     PARITY_PHOTOS)]
        ways = {
            "labels": (by_labels, {"keep_float": ()}),
            "sources": (by_sources, {"keep_float": ()}),
            "sources + float head": (by_sources, {"keep_float": HEAD}),
            "sources + float last block": (by_sources, {"keep_float": ("blocks.6", *HEAD)}),
            "sources, percentile": (by_sources, {"keep_float": (), "ranges": "percentile"}),
            "sources + float stem, block 0": (by_sources, {"keep_float": STEM}),
            "sources + float stem, blocks 0-1": (by_sources, {"keep_float": float_front(2)}),
            "sources, uint8 weights": (by_sources, {"keep_float": (), "weights": "uint8"}),
            "sources, 8-bit int8 weights (VNNI)": (by_sources, {"keep_float": (), "weights": "int8"}),
        }
        ways = {name: way for name, way in ways.items() if not args.ways or name in args.ways}
        for name, (chosen, options) in ways.items():
            int8_path = Path(scratch) / f"{name}.int8.onnx"
            calibration = [load_image(s.path, min_side=setting.config.image_size) for s in chosen]
            quantize_model(float_path, int8_path, calibration, parity_photos=parity, **options)
            scores = _ivory_scores(Classifier(int8_path), photos)
            if name == "labels" and not args.ways:
                _print_tensor_errors(float_path, int8_path, photos[:SQNR_PHOTOS], setting.config.image_size)
            print(f"  int8 {name:34} AUC {auc(scores, ivory):.4f}  loss {float_auc - auc(scores, ivory):+.4f}  "
                  f"mean |p - p_float| {np.abs(scores - float_scores).mean():.4f}  "
                  f"{_median_ms(int8_path, photos[:TIMED_PHOTOS]):.1f} ms/photo "
                  f"(float32 {_median_ms(float_path, photos[:TIMED_PHOTOS]):.1f})", flush=True)
    return 0


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", type=Path, default=Path("training/configs/ivory.toml"))
    parser.add_argument("--run", type=Path, default=Path("runs/keep-pretrained"))
    parser.add_argument("--candidate", choices=keep_pretrained.TRAINED, default="l2-sp")
    parser.add_argument("--probe-share", type=float, default=0.0, help="two tails with the probe at this share")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--ways", nargs="*", help="only these ways (names as printed)")
    return parser.parse_args(argv)


def _network(setting: keep_pretrained.Setting, candidate: str, probe_share: float) -> torch.nn.Module:
    """The whole network the candidate ships: ImageNet's front, its trained tail, and the probe's tail beside it if
    `probe_share` is above 0."""
    model = build_model(setting.config.architecture, len(setting.labels))
    tail = split_model(model, setting.config.trainable_from_block)[1]
    tail.load_state_dict(keep_pretrained._trained_tail(setting, candidate).state_dict())
    if not probe_share:
        return model.eval()
    imagenet = build_model(setting.config.architecture, len(setting.labels))
    set_head(imagenet.get_classifier(), keep_pretrained._probe(setting))
    return TwoTailNetwork(model, imagenet, setting.config.trainable_from_block, probe_share).eval()


def _model_info(setting: keep_pretrained.Setting, network: torch.nn.Module) -> ModelInfo:
    """Temperature and thresholds fitted on calib by the release rule, as training would write them."""
    config = setting.config
    scorer = network.from_front if isinstance(network, TwoTailNetwork) else split_model(
        network, config.trainable_from_block)[1]
    logits, calib = setting.cache.logits(scorer, setting.samples, "calib")
    targets = np.array([setting.labels.index(s.label) for s in calib])
    temperature, points = calibrate(logits, targets, [s.source for s in calib], setting.labels, ["ivory"],
                                    config.threshold_rule())
    return ModelInfo(name="int8-study", version="0", labels=tuple(setting.labels), preprocessing=config.preprocessing,
                     temperature=temperature, operating_points={k: OperatingPoint(**vars(v)) for k, v in points.items()},
                     training={}, metrics={}, notes="")


def _spread_over_sources(samples: list[Sample], count: int) -> list[Sample]:
    """`count` photos taken in turn from each source (then spread over labels within it), so every kind of photo
    the model will see sets the activation ranges, not mostly the commonest source."""
    sources = sorted({s.source for s in samples})
    share = -(-count // len(sources))
    return [photo for source in sources for photo in spread([s for s in samples if s.source == source], share)][:count]


def _ivory_scores(classifier: Classifier, photos: list) -> np.ndarray:
    ivory = classifier.info.labels.index("ivory")
    parts = [classifier.probabilities(classifier.logits(classifier.prepare_images(photos[start : start + BATCH])))
             for start in range(0, len(photos), BATCH)]
    return np.concatenate(parts)[:, ivory]


def _median_ms(model: Path, photos: list) -> float:
    """Median milliseconds of one photo's forward pass (decoded and resized beforehand: the network alone)."""
    classifier = Classifier(model)
    batches = [classifier.prepare_images([photo]) for photo in photos]
    times = []
    for batch in batches:
        start = time.perf_counter()
        classifier.logits(batch)
        times.append(time.perf_counter() - start)
    return 1000 * float(np.median(times))


def _print_tensor_errors(float_path: Path, int8_path: Path, photos: list, size: int) -> None:
    """Signal-to-quantisation-noise (dB) of each activation of the int8 file against the float one on the same
    photos, the error accumulated up to that layer; lowest per module, worst five modules and the network's end."""
    import onnx
    from onnxruntime.quantization import qdq_loss_debug as debug

    from training.quantize import _module_path

    reference = Classifier(float_path)
    batches = [{reference.input_name: reference.prepare_images(photos)}]
    with tempfile.TemporaryDirectory() as scratch:
        activations = {}
        for kind, path in (("float", float_path), ("int8", int8_path)):
            augmented = Path(scratch) / f"{kind}.onnx"
            debug.modify_model_output_intermediate_tensors(str(path), str(augmented))
            activations[kind] = debug.collect_activations(str(augmented), iter(batches))  # any iterable of inputs
    errors = debug.compute_activation_error(debug.create_activation_matching(activations["int8"], activations["float"]))
    by_module: dict[str, float] = {}  # in the graph's order, which is the network's
    for node in onnx.load(str(float_path)).graph.node:
        module = ".".join(_module_path(node).split(".")[:2]) or node.op_type
        for tensor in node.output:
            if "xmodel_err" in errors.get(tensor, {}):
                by_module[module] = min(by_module.get(module, np.inf), float(errors[tensor]["xmodel_err"]))
    print("  SQNR of int8 against float (dB, higher is closer), lowest per module, in network order:")
    print("   " + ", ".join(f"{module} {error:.1f}" for module, error in by_module.items()))


if __name__ == "__main__":
    sys.exit(main())
