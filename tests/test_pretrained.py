"""The ways of keeping what ImageNet knew (`training.pretrained`), on small random networks: exact, not approximate."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="training tests need the [train] extra: pip install '.[train]'")

from conftest import make_photo  # noqa: E402
from training.backbone import build_model, split_model  # noqa: E402
from training.data import Sample  # noqa: E402
from training.frozen_features import FeatureCache  # noqa: E402
from training.head import Head  # noqa: E402
from training.pretrained import (  # noqa: E402
    PullToStart, TwoTailNetwork, interpolate, linear_probe, pooled, set_head,
)

FROM_BLOCK = 5


def _network(seed: int, labels: int = 2) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = build_model("tf_efficientnet_lite0", labels, pretrained=False)
    for parameter in model.get_classifier().parameters():  # a zero classifier would hide a wrong mix
        torch.nn.init.normal_(parameter)
    return model.eval()


def _sharing_the_front(network: torch.nn.Module, other: torch.nn.Module) -> torch.nn.Module:
    """`other` with `network`'s frozen front, as a fine-tuned and a pretrained network share theirs."""
    front_prefixes = ("conv_stem.", "bn1.", *(f"blocks.{block}." for block in range(FROM_BLOCK)))
    front = {name: tensor for name, tensor in network.state_dict().items() if name.startswith(front_prefixes)}
    other.load_state_dict(front, strict=False)
    return other


def test_interpolated_weights_lie_between_the_two_networks_and_meet_them_at_the_ends():
    first, second = _network(0).state_dict(), _network(1).state_dict()
    for share in (0.0, 0.3, 1.0):
        mixed = interpolate(first, second, share)
        for name, tensor in mixed.items():
            if not tensor.is_floating_point():
                assert torch.equal(tensor, second[name])
                continue
            low, high = torch.minimum(first[name], second[name]), torch.maximum(first[name], second[name])
            assert bool(((tensor >= low - 1e-6) & (tensor <= high + 1e-6)).all()), name
            assert torch.allclose(tensor, (1 - share) * first[name] + share * second[name], atol=1e-6)
    assert all(torch.equal(interpolate(first, second, 0.0)[name], first[name]) for name in first
               if first[name].is_floating_point())


def test_interpolation_refuses_networks_that_differ_and_shares_outside_0_1():
    first = _network(0).state_dict()
    with pytest.raises(ValueError, match="differ"):
        interpolate(first, _network(1, labels=3).state_dict() | {"extra": torch.zeros(1)}, 0.5)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        interpolate(first, first, 1.5)


def test_two_tails_mix_both_networks_logits_and_embed_both_tails():
    fine_tuned = _network(0)
    pretrained = _sharing_the_front(fine_tuned, _network(1))
    pixels = torch.rand(3, 3, 64, 64)
    with torch.no_grad():
        expected = 0.7 * fine_tuned(pixels) + 0.3 * pretrained(pixels)
        both = TwoTailNetwork(fine_tuned, pretrained, FROM_BLOCK, share=0.3).eval()
        logits = both(pixels)
        embedding = both.forward_features(pixels).mean(dim=(2, 3))
    assert torch.allclose(logits, expected, atol=1e-4)
    width = fine_tuned.get_classifier().in_features
    assert embedding.shape == (3, 2 * width)
    with torch.no_grad():  # the second half of the embedding is the pretrained network's own pooled features
        assert torch.allclose(embedding[:, width:], pretrained.forward_features(pixels).mean(dim=(2, 3)), atol=1e-5)


def test_two_tails_refuse_networks_whose_fronts_differ():
    with pytest.raises(ValueError, match="front"):
        TwoTailNetwork(_network(0), _network(1), FROM_BLOCK, share=0.5)


def test_the_two_tail_graph_exports_with_both_tails_and_agrees_with_torch(tmp_path):
    pytest.importorskip("onnx")
    from training.export import write_onnx
    from wildvision.classifier import Classifier
    from wildvision.model_info import ModelInfo, OperatingPoint, Preprocessing

    fine_tuned = _network(0)
    network = TwoTailNetwork(fine_tuned, _sharing_the_front(fine_tuned, _network(1)), FROM_BLOCK, share=0.5).eval()
    info = ModelInfo(name="two-tails", version="0.0.1", labels=("ivory", "not_ivory"),
                     preprocessing=Preprocessing(64, "squash", (0.5,) * 3, (0.5,) * 3), temperature=1.0,
                     operating_points={"ivory": OperatingPoint(review=0.5, block=0.9)})
    path = tmp_path / "two-tails.onnx"
    write_onnx(network, info, path)
    classifier = Classifier(path)
    batch = np.random.default_rng(0).random((2, 3, 64, 64), dtype=np.float32)
    logits, embedding = classifier.outputs(batch, ("logits", "embedding"))
    with torch.no_grad():
        assert np.abs(logits - network(torch.from_numpy(batch)).numpy()).max() < 1e-3
    assert embedding.shape == (2, 2 * 1280)


def test_pull_to_start_is_zero_at_the_start_grows_with_distance_and_leaves_the_classifier_free():
    _, tail = split_model(_network(0), FROM_BLOCK)
    pull = PullToStart(tail, strength=0.5)
    assert float(pull().detach()) == 0.0
    with torch.no_grad():
        tail[-1].weight.add_(1.0)  # the new classifier moves freely
    assert float(pull().detach()) == 0.0
    with torch.no_grad():
        tail[0][0].conv_pw.weight.add_(0.1)
    moved = tail[0][0].conv_pw.weight.numel()
    assert float(pull().detach()) == pytest.approx(0.5 / 2 * moved * 0.01, rel=1e-3)


def test_the_probe_learns_what_separates_the_labels_from_the_tails_pooled_features():
    _, tail = split_model(_network(0), FROM_BLOCK)
    generator = torch.Generator().manual_seed(0)
    # Frozen-front outputs (112 channels at 4x4): one label brighter in half the channels, as a real front would
    # make a visible difference.
    features = torch.randn(40, 112, 4, 4, generator=generator)
    features[:20, :56] += 2.0
    samples = [Sample(path=f"{i}.jpg", label="ivory" if i < 20 else "not_ivory", group=str(i), split="train")
               for i in range(40)]
    cache = FeatureCache(features.half(), owners=list(range(40)), views=[0] * 40)
    probe = linear_probe(tail, cache, samples, ["ivory", "not_ivory"])
    predicted = probe.logits(pooled(tail, cache.features)).argmax(1)
    assert (predicted == np.array([0] * 20 + [1] * 20)).mean() >= 0.9

    set_head(tail[-1], probe)  # LP-FT starts from the probe: the tail's own logits are the probe's
    with torch.no_grad():
        assert np.allclose(tail(features.half().float()).numpy(), probe.logits(pooled(tail, cache.features)),
                           atol=1e-4)
    assert isinstance(probe, Head)


def _train_args(data, out, *extra: str) -> list[str]:
    return ["--data", str(data), "--out", str(out), "--image-size", "64", "--views", "1", "--epochs", "2",
            "--batch-size", "8", "--lr", "3e-3", "--val-fraction", "0.25", "--calib-fraction", "0.3",
            "--workers", "0", "--threads", "1", "--allow-rare", *extra]


def test_wise_ft_ships_weights_between_imagenet_and_the_fine_tuned_run(tmp_path):
    from conftest import make_dataset
    from training import train
    from training.checkpoint import load_checkpoint

    data = make_dataset(tmp_path / "data", ("ivory", "not_ivory"), per_label=14)
    run = tmp_path / "run"
    assert train.main(_train_args(data, run)) == 0
    fine_tuned = load_checkpoint(run / "checkpoint.safetensors")
    # The mix is applied to the finished fine-tuning: the rerun resumes it instead of training again.
    assert train.main(_train_args(data, run, "--keep-pretrained", "wise-ft", "--pretrained-share", "0.4")) == 0
    mixed = load_checkpoint(run / "checkpoint.safetensors")
    assert mixed["config"]["keep_pretrained"] == "wise-ft"
    imagenet = build_model("tf_efficientnet_lite0", 2).state_dict()

    moved = 0
    for name, tensor in mixed["state_dict"].items():
        if not tensor.is_floating_point() or name.startswith("classifier."):
            continue  # the classifier's ImageNet end is the probe head, not ImageNet's own
        start, end = imagenet[name], fine_tuned["state_dict"][name]
        assert torch.allclose(tensor, 0.4 * start + 0.6 * end, atol=1e-5), name
        moved += not torch.equal(start, end)
    assert moved > 0  # the tail did train, so the mix is not trivially ImageNet's


def test_pull_to_pretrained_keeps_the_trained_blocks_nearer_imagenet_and_is_recorded(tmp_path):
    from conftest import make_dataset
    from training import train
    from training.checkpoint import load_checkpoint

    data = make_dataset(tmp_path / "data", ("ivory", "not_ivory"), per_label=14)
    imagenet = build_model("tf_efficientnet_lite0", 2).state_dict()

    def distance_moved(run_name: str, *extra: str) -> float:
        assert train.main(_train_args(data, tmp_path / run_name, *extra)) == 0
        trained = load_checkpoint(tmp_path / run_name / "checkpoint.safetensors")
        assert trained["config"]["pull_to_pretrained"] == (float(extra[-1]) if extra else 0.0)
        return sum(float((tensor - imagenet[name]).pow(2).sum()) for name, tensor in trained["state_dict"].items()
                   if tensor.is_floating_point() and name.startswith("blocks.") and "running" not in name)

    free, pulled = distance_moved("free"), distance_moved("pulled", "--pull-to-pretrained", "50")
    assert 0 < pulled < 0.5 * free


def test_two_tails_train_export_and_keep_both_tails_in_the_graph(tmp_path):
    from conftest import make_dataset
    from training import export, train
    from wildvision.classifier import Classifier

    data = make_dataset(tmp_path / "data", ("ivory", "not_ivory"), per_label=14)
    assert train.main(_train_args(data, tmp_path / "run", "--keep-pretrained", "two-tails")) == 0
    model = tmp_path / "two-tails.onnx"
    assert export.main(["--checkpoint", str(tmp_path / "run" / "checkpoint.safetensors"), "--out", str(model),
                        "--parity-photos", "4"]) == 0  # the parity check compares the two-tail network with the file
    classifier = Classifier(model)
    assert classifier.info.training["config"]["keep_pretrained"] == "two-tails"
    photo = classifier.prepare_images([make_photo("ivory", 7)])
    assert classifier.outputs(photo, ("embedding",))[0].shape == (1, 2 * 1280)


def test_the_shipped_model_runs_imagenets_own_tail_beside_the_fine_tuned_one(shipped_model):
    """The release recipe (`training/configs/ivory.toml`) and the file agree on the mechanism, and both tails are in
    the graph: the second half of its embedding is exactly what the untouched ImageNet network pools."""
    import tomllib
    from pathlib import Path

    from wildvision.classifier import Classifier

    classifier = Classifier(shipped_model)
    recorded = classifier.info.training["config"]
    recipe = tomllib.loads((Path(__file__).parent.parent / "training/configs/ivory.toml").read_text())
    assert recorded["keep_pretrained"] == recipe["keep-pretrained"] == "two-tails"
    assert recorded["pretrained_share"] == recipe["pretrained-share"]
    assert classifier.info.version == recipe["version"]

    batch = classifier.prepare_images([make_photo("ivory", 3), make_photo("not_ivory", 4)])
    embedding = classifier.outputs(batch, ("embedding",))[0]
    assert embedding.shape == (2, 2 * 1280)
    imagenet = build_model("tf_efficientnet_lite0", 2).eval()
    with torch.no_grad():
        expected = imagenet.forward_features(torch.from_numpy(batch)).mean(dim=(2, 3)).numpy()
    assert np.abs(embedding[:, 1280:] - expected).max() < 1e-3
    assert np.abs(embedding[:, :1280] - expected).max() > 1e-2  # the other half is the fine-tuned tail's
