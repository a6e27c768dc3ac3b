"""Static int8 quantisation: a smaller twin that describes itself and agrees with its float model, or no file at all."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("torch", reason="quantisation tests need the [train] extra: pip install '.[train]'")

from conftest import make_photo  # noqa: E402
from training import export  # noqa: E402
from training.checkpoint import load_checkpoint  # noqa: E402
from training.evaluation import evaluate  # noqa: E402
from training.errors import DataError  # noqa: E402
from training.quantize import (  # noqa: E402
    DEFAULT_FLOAT_BLOCKS, QuantizationError, float_front, nodes_of_modules, quantize_model,
)
from training.split import load_split  # noqa: E402
from wildvision import Classifier  # noqa: E402

LABELS = ("ivory", "horn", "not_ivory")


def _photos(first_seed: int, per_label: int) -> list:
    # The tiny dataset uses seeds 0-13, so these are photos the model never saw.
    return [make_photo(label, first_seed + i) for i in range(per_label) for label in LABELS]


def _must_not_split(*_):
    raise AssertionError("export split the data again instead of reading the recorded split")


@pytest.fixture(scope="module")
def int8_export(tiny_run, tmp_path_factory) -> dict:
    """The tiny model exported again with `--int8`: the float file and its int8 twin."""
    out = tmp_path_factory.mktemp("int8") / "tiny.onnx"
    with pytest.MonkeyPatch.context() as patch:
        # Parity, calibration and both evaluations read the split training recorded: no photo is hashed again.
        patch.setattr("training.data.hash_files", _must_not_split)
        assert export.main(["--checkpoint", str(tiny_run["checkpoint"]), "--out", str(out), "--parity-photos", "8",
                            "--int8", "--int8-calibration-photos", "16"]) == 0
    return {"float": out, "int8": out.parent / "tiny.int8.onnx", "data": tiny_run["data"],
            "checkpoint": tiny_run["checkpoint"]}


def test_export_writes_a_smaller_int8_twin(int8_export):
    assert int8_export["int8"].is_file()
    # int8 weights are a quarter of float32; a little is spent on scales, zero points and QDQ nodes.
    assert int8_export["int8"].stat().st_size < 0.4 * int8_export["float"].stat().st_size


def _optimized_op_types(model, tmp_path) -> list[str]:
    """The operators onnxruntime's CPU provider runs for `model`, after its graph optimisations (fusions)."""
    import onnx
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / f"optimized-{model.stem}.onnx")
    ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
    return [node.op_type for node in onnx.load(options.optimized_model_filepath).graph.node]


def test_every_convolution_after_the_float_front_runs_as_an_integer_kernel(int8_export, tmp_path):
    import onnx

    # Speed is the point of the twin: a convolution onnxruntime cannot fuse runs in float between (de)quantisations.
    # The stem and block 0 stay float on purpose (training.quantize.DEFAULT_FLOAT_BLOCKS), the rest must not.
    convolutions = [node for node in onnx.load(str(int8_export["float"])).graph.node if node.op_type == "Conv"]
    front = set(nodes_of_modules(int8_export["float"], float_front(DEFAULT_FLOAT_BLOCKS)))
    float_convolutions = [node for node in convolutions if node.name in front]
    assert 0 < len(float_convolutions) < len(convolutions)
    assert _optimized_op_types(int8_export["int8"], tmp_path).count("QLinearConv") == (
        len(convolutions) - len(float_convolutions))


def test_with_no_float_front_every_convolution_is_integer(tiny_run, tmp_path):
    out = tmp_path / "all.int8.onnx"
    quantize_model(tiny_run["model"], out, _photos(100, 4), parity_photos=_photos(200, 4), keep_float=(),
                   min_agreement=0.0, max_probability_difference=1.0)
    optimized = _optimized_op_types(out, tmp_path)
    assert "Conv" not in optimized and "FusedConv" not in optimized and optimized.count("QLinearConv") > 0


def test_keeping_a_module_float_that_the_model_lacks_is_refused(tiny_run, tmp_path):
    with pytest.raises(DataError, match="no operator of the model belongs to module 'blocks.99'"):
        quantize_model(tiny_run["model"], tmp_path / "x.int8.onnx", _photos(100, 2), parity_photos=_photos(200, 2),
                       keep_float=("blocks.99",))
    assert list(tmp_path.iterdir()) == []


def test_int8_twin_describes_itself_like_its_float_model(int8_export):
    float_info, int8_info = Classifier(int8_export["float"]).info, Classifier(int8_export["int8"]).info
    assert (float_info.precision, int8_info.precision) == ("float32", "int8")
    assert int8_info.labels == float_info.labels == ("horn", "ivory", "not_ivory")
    assert int8_info.operating_points == float_info.operating_points
    assert (int8_info.preprocessing, int8_info.temperature) == (float_info.preprocessing, float_info.temperature)
    assert (int8_info.full_name, int8_info.training, int8_info.notes) == (
        float_info.full_name, float_info.training, float_info.notes)


def test_each_file_carries_its_own_metrics_and_the_twin_shows_the_cost(int8_export):
    checkpoint = load_checkpoint(int8_export["checkpoint"])
    float_classifier, int8_classifier = Classifier(int8_export["float"]), Classifier(int8_export["int8"])
    assert float_classifier.info.metrics == {"split": "val", **checkpoint["metrics"]}
    int8_metrics = int8_classifier.info.metrics
    assert int8_metrics["split"] == "val"
    samples = load_split(checkpoint)
    assert int8_metrics["accuracy"] == evaluate(int8_classifier, samples).metrics["accuracy"]
    assert int8_metrics["float_accuracy"] == evaluate(float_classifier, samples).metrics["accuracy"]


def test_int8_predictions_agree_with_the_float_model(int8_export):
    photos = _photos(300, 10)
    expected = Classifier(int8_export["float"]).predict_batch(photos)
    actual = Classifier(int8_export["int8"]).predict_batch(photos)
    same_label = np.mean([e.top_label == a.top_label for e, a in zip(expected, actual)])
    difference = np.mean([abs(e.scores[k] - a.scores[k]) for e, a in zip(expected, actual) for k in e.scores])
    # The tiny model is barely trained and calibrated with a very low temperature, so near-ties are sharp: a looser
    # bound than export's default (95%, 0.05), which is meant for the real model.
    assert same_label >= 0.8
    assert difference <= 0.1


def test_calibration_uses_only_calib_photos(tiny_run):
    split = load_split(load_checkpoint(tiny_run["checkpoint"]))
    samples = export.calibration_samples(split, 200)
    assert samples and {s.split for s in samples} == {"calib"}
    assert len(export.calibration_samples(split, 2)) == 2


@pytest.mark.parametrize("threshold", [{"min_agreement": 1.01}, {"max_probability_difference": -1.0}])
def test_quantize_refuses_a_model_that_disagrees(tiny_run, tmp_path, threshold):
    out = tmp_path / "tiny.int8.onnx"
    with pytest.raises(QuantizationError, match="disagrees"):
        quantize_model(tiny_run["model"], out, _photos(100, 4), parity_photos=_photos(200, 4), **threshold)
    assert list(tmp_path.iterdir()) == []  # neither the file nor the scratch folder is left behind


def test_export_with_int8_writes_both_files_or_neither(tiny_run, tmp_path, capsys):
    out = tmp_path / "tiny.onnx"
    status = export.main(["--checkpoint", str(tiny_run["checkpoint"]), "--out", str(out), "--parity-photos", "8",
                          "--int8", "--int8-calibration-photos", "8", "--int8-min-agreement", "1.01"])
    assert status == 1
    assert "export refused" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
