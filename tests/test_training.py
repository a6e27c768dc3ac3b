"""Training, calibration and export on generated photos (real timm/torch code paths, CPU, tiny sizes)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch", reason="training tests need the [train] extra: pip install '.[train]'")

from conftest import make_dataset, make_photo  # noqa: E402
from training import export  # noqa: E402
from training.calibration import (  # noqa: E402
    choose_operating_point, expected_calibration_error, fit_temperature, softmax,
)
from training.checkpoint import load_checkpoint  # noqa: E402
from training.data import (  # noqa: E402
    assign_splits, load_samples, manifest_hash, parse_relabel, prepare_samples,
)
from training.dedupe import hash_files, near_duplicate_pairs  # noqa: E402
from training.errors import DataError  # noqa: E402
from training.split import load_split  # noqa: E402
from wildvision import Classifier  # noqa: E402


def test_folder_per_label_dataset(tmp_path):
    samples = load_samples(make_dataset(tmp_path, ("ivory", "not_ivory"), per_label=3))
    assert sorted({s.label for s in samples}) == ["ivory", "not_ivory"] and len(samples) == 6


def test_csv_dataset_keeps_groups_on_one_side(tmp_path):
    make_photo("ivory", 0).save(tmp_path / "a.jpg")
    rows = ["path,label,group"] + [f"a.jpg,{'ivory' if i % 2 else 'other'},object{i // 4}" for i in range(400)]
    (tmp_path / "data.csv").write_text("\n".join(rows))
    samples = assign_splits(load_samples(tmp_path / "data.csv"), val_fraction=0.3, calib_fraction=0.2)
    splits_per_group: dict[str, set[str]] = {}
    for sample in samples:
        splits_per_group.setdefault(sample.group, set()).add(sample.split)
    assert all(len(splits) == 1 for splits in splits_per_group.values())
    assert {s.split for s in samples} == {"train", "calib", "val"}


def test_given_val_split_is_kept_and_calibration_comes_from_train(tmp_path):
    rows = ["path,label,source_id,split"] + [f"x{i}.jpg,ivory,id{i},{'val' if i < 50 else 'train'}" for i in range(200)]
    (tmp_path / "m.csv").write_text("\n".join(rows))
    samples = assign_splits(load_samples(tmp_path / "m.csv"), val_fraction=0.0, calib_fraction=0.3)
    assert all((s.split == "val") == (int(s.group[2:]) < 50) for s in samples)
    assert 0 < sum(s.split == "calib" for s in samples) < 150


def _reposted_copies(folder, count: int) -> list[tuple[str, str]]:
    """Original photos and re-posted copies (resized, re-compressed) under unrelated names."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for index in range(count):
        original = make_photo("ivory" if index % 2 else "not_ivory", index, size=(320, 240))
        original.save(folder / f"a{index}.png")
        original.resize((240, 180), Image.Resampling.BICUBIC).save(folder / f"z{index}.jpg", quality=60)
        names.append((f"a{index}.png", f"z{index}.jpg"))
    return names


def test_near_duplicates_are_found_and_unrelated_photos_are_not(tmp_path):
    names = _reposted_copies(tmp_path, 12)
    paths = [tmp_path / name for pair in names for name in pair]
    pairs = near_duplicate_pairs(*hash_files(paths))
    assert sorted(pairs) == [(2 * i, 2 * i + 1) for i in range(12)]


def test_near_duplicates_never_straddle_the_split(tmp_path):
    names = _reposted_copies(tmp_path / "photos", 30)
    rows = ["path,label"] + [f"photos/{n},{'ivory' if i % 2 else 'other'}" for i, pair in enumerate(names) for n in pair]
    (tmp_path / "data.csv").write_text("\n".join(rows))
    samples, report = prepare_samples(tmp_path / "data.csv", val_fraction=0.3, calib_fraction=0.2)
    split_of = {s.path.name: s.split for s in samples}
    assert report.near_duplicate_pairs == 30
    assert all(split_of[a] == split_of[b] for a, b in names)


def test_training_copies_of_given_val_photos_are_dropped(tmp_path):
    names = _reposted_copies(tmp_path / "photos", 6)
    rows = ["path,label,split"] + [f"photos/{a},ivory,val" for a, _ in names] + [f"photos/{b},ivory,train" for _, b in names]
    (tmp_path / "data.csv").write_text("\n".join(rows))
    samples, report = prepare_samples(tmp_path / "data.csv", val_fraction=0.0, calib_fraction=0.2)
    assert report.dropped_from_training == 6
    assert {s.split for s in samples} == {"val"}


@pytest.mark.parametrize("csv_text, message", [
    ("file,label\na.jpg,ivory\n", "missing column"),
    ("path,label,split\na.jpg,ivory,test\n", "split must be"),
    ("path,label\n,ivory\n", "empty path"),
])
def test_bad_csv_is_refused_with_its_line(tmp_path, csv_text, message):
    (tmp_path / "d.csv").write_text(csv_text)
    with pytest.raises(DataError, match=message):
        load_samples(tmp_path / "d.csv")


def test_temperature_scaling_fixes_overconfidence():
    rng = np.random.default_rng(0)
    true_logits = rng.normal(0, 1.5, size=(4000, 3))
    targets = np.array([rng.choice(3, p=p) for p in softmax(true_logits)])
    overconfident = true_logits * 3.0
    temperature = fit_temperature(overconfident, targets)
    assert temperature == pytest.approx(3.0, rel=0.15)
    before = expected_calibration_error(softmax(overconfident), targets)
    after = expected_calibration_error(softmax(overconfident, temperature), targets)
    assert after < before / 2


def test_operating_point_meets_its_targets():
    rng = np.random.default_rng(1)
    scores = np.concatenate([rng.beta(5, 2, 500), rng.beta(2, 5, 2000)])
    positive = np.arange(2500) < 500
    point = choose_operating_point(scores, positive, review_recall=0.9, block_false_positive_rate=0.01)
    assert (scores[positive] >= point.review).mean() >= 0.9
    assert (scores[~positive] >= point.block).mean() <= 0.01
    assert point.review <= point.block


def test_open_world_operating_point_bounds_false_alarms_in_every_source():
    rng = np.random.default_rng(2)
    positives = rng.beta(6, 2, 300)
    easy, hard = rng.beta(1, 8, 2000), rng.beta(3, 4, 400)  # a source of harmless look-alikes scores much higher
    scores = np.concatenate([positives, easy, hard])
    positive = np.arange(len(scores)) < 300
    groups = ["ivory"] * 300 + ["everyday"] * 2000 + ["lookalikes"] * 400
    point = choose_operating_point(scores, positive, review_false_positive_rate=0.01, block_false_positive_rate=0.001,
                                   groups=groups)
    for start, stop in ((300, 2300), (2300, 2700)):
        assert (scores[start:stop] >= point.review).mean() <= 0.01
        assert (scores[start:stop] >= point.block).mean() <= 0.001
    everyday_bound = choose_operating_point(scores, positive, review_false_positive_rate=0.01,
                                            block_false_positive_rate=0.001, groups=groups, review_groups={"everyday"})
    assert everyday_bound.review < point.review and everyday_bound.block == point.block  # block still bounds all
    assert (scores[300:2300] >= everyday_bound.review).mean() <= 0.01
    pooled = choose_operating_point(scores, positive, review_false_positive_rate=0.01, block_false_positive_rate=0.001)
    assert (scores[2300:] >= pooled.review).mean() > 0.01  # pooled, the look-alikes alone would exceed the rate
    with pytest.raises(ValueError, match="exactly one"):
        choose_operating_point(scores, positive, review_recall=0.9, review_false_positive_rate=0.01,
                               block_false_positive_rate=0.001)


def _harmless_source(folder: Path, count: int) -> Path:
    """A CSV source of harmless photos from two places, labelled with a name no model uses: its config relabels it."""
    folder.mkdir(parents=True)
    rows = ["path,label,kind,source,source_id"]
    for index in range(count):
        make_photo("horn", 700 + index).save(folder / f"h{index}.jpg")
        rows.append(f"h{index}.jpg,unlabelled,thing{index % 3},{'shelves' if index % 2 else 'kitchens'},id{index}")
    (folder / "manifest.csv").write_text("\n".join(rows))
    return folder


def test_training_on_several_sources_records_and_reports_each(tmp_path, capsys):
    from training import train
    from training.evaluation import evaluate

    products = make_dataset(tmp_path / "products", ("ivory", "not_ivory"), per_label=14)
    everyday = _harmless_source(tmp_path / "everyday", 24)
    config = tmp_path / "run.toml"
    config.write_text(f"""out = "{tmp_path / 'run'}"
name = "multi"
image-size = 64
views = 1
epochs = 2
batch-size = 8
val-fraction = 0.25
calib-fraction = 0.3
workers = 0
threads = 1
allow-rare = true
review-fpr = 0.1
block-fpr = 0.01
[[data]]
path = "{products}"
[[data]]
path = "{everyday}"
label = "not_ivory"
calib-fraction = 0.5
views = 0
""")
    assert train.main(["--config", str(config)]) == 0
    # Recipes are chosen on calib, so the log reports calib accuracy for every source (val only reports).
    calib_line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("calib accuracy"))
    assert "shelves" in calib_line and "kitchens" in calib_line and "prohibited flagged" in calib_line
    checkpoint = load_checkpoint(tmp_path / "run" / "checkpoint.safetensors")
    assert checkpoint["labels"] == ["ivory", "not_ivory"]
    assert checkpoint["config"]["data"] == [{"path": str(products)}, {"path": str(everyday), "label": "not_ivory",
                                                                        "calib_fraction": 0.5, "views": 0}]
    datasets = checkpoint["data"]["datasets"]
    assert set(datasets) == {"products", "everyday"} and datasets["everyday"]["photos"] == 24
    assert len(datasets["everyday"]["manifest_sha256"]) == 64 and len(checkpoint["data"]["content_sha256"]) == 64
    assert checkpoint["history"]["loss"] and len(checkpoint["history"]["loss"]) == 2

    model = tmp_path / "multi.onnx"
    assert export.main(["--checkpoint", str(tmp_path / "run" / "checkpoint.safetensors"), "--out", str(model),
                        "--parity-photos", "4"]) == 0
    classifier = Classifier(model)
    assert classifier.info.training["parent"] == "ImageNet weights of tf_efficientnet_lite0"
    # No --prohibited: the default rule decided, and the model file says what it decided, not how.
    assert classifier.info.training["config"]["prohibited"] == list(classifier.info.operating_points) == ["ivory"]
    metrics = evaluate(classifier, load_split(classifier.info.training)).metrics  # the run's split, where recorded
    assert set(metrics["accuracy_by_dataset"]) == {"products", "everyday"}
    assert {"shelves", "kitchens"} <= set(metrics["decisions_by_source"])
    everyday_val = metrics["decisions_by_dataset"]["everyday"]
    assert everyday_val["harmless"] > 0 and everyday_val["prohibited"] == 0


def test_evaluate_takes_moved_sources_in_order_and_refuses_a_miscount(tiny_run, tmp_path):
    from training.evaluate import main

    assert main(["--model", str(tiny_run["model"]), "--data", str(tiny_run["data"])]) == 0
    assert main(["--model", str(tiny_run["model"]), "--data", str(tiny_run["data"]), "--data", str(tmp_path)]) == 2


def test_checkpoint_describes_itself(tiny_run):
    checkpoint = load_checkpoint(tiny_run["checkpoint"])
    assert checkpoint["architecture"] == "tf_efficientnet_lite0"
    assert checkpoint["labels"] == ["horn", "ivory", "not_ivory"]
    assert checkpoint["preprocessing"]["input_size"] == 64
    assert set(checkpoint["operating_points"]) == {"ivory", "horn"}
    assert checkpoint["config"]["epochs"] == 3
    samples, _ = prepare_samples(tiny_run["data"], val_fraction=0.25, calib_fraction=0.3)
    assert checkpoint["data"]["manifest_sha256"] == manifest_hash(samples)


def test_exported_model_describes_itself_and_runs_without_torch_code(tiny_run):
    classifier = Classifier(tiny_run["model"])
    info = classifier.info
    assert (info.name, info.version, info.labels) == ("tiny", "0.0.1", ("horn", "ivory", "not_ivory"))
    assert info.metrics["split"] == "val" and info.temperature > 0
    assert info.training["data"]["by_split"]["val"]
    prediction = classifier.predict(make_photo("ivory", 500))
    assert prediction.model_version == "0.0.1" and prediction.top_label in info.labels


def test_export_refuses_a_model_that_disagrees(tiny_run, tmp_path, capsys):
    out = tmp_path / "refused.onnx"
    # A negative tolerance cannot be met: the parity check must fail and nothing may be written.
    assert export.main(["--checkpoint", str(tiny_run["checkpoint"]), "--out", str(out), "--tolerance", "-1"]) == 1
    assert "export refused" in capsys.readouterr().err
    assert not out.exists() and not list(tmp_path.glob("*.onnx"))


def test_staged_files_appear_together_and_only_when_every_check_passed(tmp_path):
    """export, adapt and quantize write through `staged`: a check that raises leaves every destination as it was;
    otherwise each file written replaces its destination, and one asked for but not written leaves its own alone."""
    from training.artefacts import staged

    model, twin, stale = tmp_path / "m.onnx", tmp_path / "m.int8.onnx", tmp_path / "m.reference.npz"
    stale.write_text("earlier")
    with pytest.raises(DataError):
        with staged(tmp_path) as staging:
            staging.path(model).write_text("new")
            staging.path(twin).write_text("new twin")
            raise DataError("a check failed")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.reference.npz"]  # no scratch folder left either
    with staged(tmp_path) as staging:
        staging.path(model).write_text("new")
        staging.path(twin).write_text("new twin")
        staging.path(stale)  # not written: the earlier file stays
    assert (model.read_text(), twin.read_text(), stale.read_text()) == ("new", "new twin", "earlier")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.int8.onnx", "m.onnx", "m.reference.npz"]


def test_parity_names_the_largest_difference_and_the_top_labels_that_disagree():
    from training.artefacts import check_logits
    from training.errors import ParityError

    expected = np.array([[2.0, 1.0], [0.0, 1.0]])
    assert check_logits(expected, expected + 1e-4, 1e-3, differ="A and B differ") == pytest.approx(1e-4)
    with pytest.raises(ParityError, match="A and B differ on 2 photos: 1 top-label disagreements"):
        check_logits(expected, np.array([[2.0, 1.0], [1.0, 0.0]]), 10.0, differ="A and B differ")
    with pytest.raises(ParityError, match="max logit difference 5.00e-01"):  # `also` must agree with the actual logits
        check_logits(expected, expected, 1e-3, differ="A and B differ", also=(expected + 0.5,))


def test_export_parity_on_photos_the_model_never_saw(tiny_run):

    from training.backbone import build_model

    checkpoint = load_checkpoint(tiny_run["checkpoint"])
    model = build_model("tf_efficientnet_lite0", 3, pretrained=False)
    model.load_state_dict(checkpoint["state_dict"])
    photos = [make_photo(label, 1000 + i) for i, label in enumerate(("ivory", "horn", "not_ivory") * 2)]
    assert export.check_parity(model.eval(), tiny_run["model"], photos, tolerance=1e-3) < 1e-3


@pytest.mark.parametrize("architecture", ["tf_efficientnet_lite0", "tf_efficientnet_lite1", "tf_efficientnet_lite2"])
def test_imagenet_weights_load_by_position_with_a_fresh_zero_classifier(architecture):
    import importlib

    import torch

    from training.backbone import ARCHITECTURES, build_model

    model = build_model(architecture, 3)
    module_name, class_name = ARCHITECTURES[architecture]
    locator = getattr(importlib.import_module(module_name), class_name)
    source = list(torch.load(locator.get_model_file_path(), map_location="cpu", weights_only=True).values())
    loaded = model.state_dict()
    classifier = model.get_classifier()
    assert classifier.out_features == 3 and not classifier.weight.any() and not classifier.bias.any()
    for (name, tensor), expected in zip(loaded.items(), source):
        if not name.startswith("classifier."):
            assert torch.equal(tensor, expected), name


def _train_args(data, out, epochs: int) -> list[str]:
    return ["--data", str(data), "--out", str(out), "--image-size", "64", "--views", "1", "--epochs", str(epochs),
            "--batch-size", "8", "--val-fraction", "0.25", "--calib-fraction", "0.3", "--workers", "0", "--threads", "1",
            "--allow-rare"]


def test_resuming_an_interrupted_run_gives_the_same_model(tmp_path, monkeypatch, capsys):
    import torch

    from training import fine_tune, train

    data = make_dataset(tmp_path / "data", ("ivory", "not_ivory"), per_label=14)
    assert train.main(_train_args(data, tmp_path / "straight", epochs=3)) == 0

    save = fine_tune.TrainingState.save

    def killed_after_first_epoch(self, epochs_done: int) -> None:
        save(self, epochs_done)
        raise KeyboardInterrupt  # the process dies right after epoch 1 was saved

    monkeypatch.setattr(fine_tune.TrainingState, "save", killed_after_first_epoch)
    capsys.readouterr()
    assert train.main(_train_args(data, tmp_path / "resumed", epochs=3)) == 130
    interrupted = capsys.readouterr().err.strip()
    assert "run the same command again to resume" in interrupted and "Traceback" not in interrupted
    monkeypatch.setattr(fine_tune.TrainingState, "save", save)
    assert train.main(_train_args(data, tmp_path / "resumed", epochs=3)) == 0
    log = capsys.readouterr().out
    assert "resuming after epoch 1" in log and "epoch 1:" not in log and "epoch 3:" in log

    straight = load_checkpoint(tmp_path / "straight" / "checkpoint.safetensors")["state_dict"]
    resumed = load_checkpoint(tmp_path / "resumed" / "checkpoint.safetensors")["state_dict"]
    assert all(torch.allclose(straight[key].float(), resumed[key].float(), atol=1e-6) for key in straight)


def test_relabel_turns_a_kind_into_a_label_of_its_own(tmp_path):
    for i in range(12):
        make_photo("horn" if i % 3 == 0 else "not_ivory", i).save(tmp_path / f"p{i}.png")
    rows = ["path,label,kind"] + [f"p{i}.png,not_ivory,{'horn_antler' if i % 3 == 0 else 'ceramic'}" for i in range(12)]
    (tmp_path / "d.csv").write_text("\n".join(rows))
    samples, _ = prepare_samples(tmp_path / "d.csv", val_fraction=0.2, calib_fraction=0.2,
                                 relabel=parse_relabel(["horn_antler=lookalike"]))
    assert {s.path.name: s.label for s in samples} == {
        f"p{i}.png": "lookalike" if i % 3 == 0 else "not_ivory" for i in range(12)}
    with pytest.raises(DataError, match="KIND=LABEL"):
        parse_relabel(["horn_antler"])


def test_options_come_from_a_config_file_and_the_command_line_wins(tmp_path, capsys):
    from training.train import main, parse_args

    config = tmp_path / "c.toml"
    config.write_text('data = "somewhere"\nout = "runs/x"\nepochs = 5\nbackground-sources = ["clothing"]\n')
    args = parse_args(["--config", str(config), "--epochs", "2"])
    assert ([str(s.path) for s in args.data], args.epochs, args.background_sources) == (["somewhere"], 2, ("clothing",))
    assert [str(s.path) for s in parse_args(["--config", str(config), "--data", "here"]).data] == ["here"]
    config.write_text('data = "d"\nout = "o"\nepoch = 5\n')
    assert main(["--config", str(config)]) == 2  # an input error: one line
    assert capsys.readouterr().err == f"error: {config}: unknown option(s) ['epoch']\n"


@pytest.mark.parametrize("source, error", [
    (["--epochs", "0"], "--epochs must be at least 1, got 0"),
    (["--lr", "-0.1"], "--lr must be positive, got -0.1"),
    (["--threads", "0"], "--threads must be at least 1, got 0"),
    (["--review-fpr", "0"], "--review-fpr must be a share with 0 < value < 1, got 0"),
    ("dropout = 1.5", "--dropout must be a share with 0 <= value < 1, got 1.5"),
    ('epochs = "5"', "--epochs must be a whole number, got '5'"),
    ("allow-rare = 1", "--allow-rare must be true or false, got 1"),
    ('keep-pretrained = "both"', "--keep-pretrained must be one of none, wise-ft, two-tails, got 'both'"),
    ("pretrained-share = 1.5", "--pretrained-share must be a share between 0 and 1, got 1.5"),
])
def test_a_bad_number_from_the_command_line_or_the_config_is_one_line_and_exit_2(tmp_path, capsys, source, error):
    from training.train import main

    config = tmp_path / "c.toml"
    config.write_text('data = "d"\nout = "o"\n' + (source if isinstance(source, str) else ""))
    assert main(["--config", str(config), *([] if isinstance(source, str) else source)]) == 2
    message = capsys.readouterr().err
    assert message.startswith("error: ") and message.endswith(f"{error}\n") and message.count("\n") == 1


def test_only_options_the_weights_depend_on_decide_whether_a_run_resumes():
    from dataclasses import replace

    from training.fine_tune import run_key
    from training.options import weight_settings
    from training.train import parse_args

    config = parse_args(["--data", "d", "--out", "o"])
    after_training = {"workers", "threads", "out", "config", "name", "version", "prohibited", "review_recall",
                      "review_fpr", "block_fpr", "review_sources", "allow_rare", "allow_similar_labels",
                      "keep_pretrained", "pretrained_share"}  # mixed into the finished fine-tuning
    assert set(vars(config)) - set(weight_settings(config)) == after_training
    samples = []
    assert run_key(replace(config, name="other", review_fpr=0.01, threads=1, keep_pretrained="wise-ft"),
                   samples) == run_key(config, samples)
    assert run_key(replace(config, epochs=9), samples) != run_key(config, samples)


def test_shipped_configs_parse():
    from conftest import REPO
    from training.train import parse_args

    for config in sorted((REPO / "training" / "configs").glob("*.toml")):
        args = parse_args(["--config", str(config)])
        assert args.data and args.out and args.name


def test_manifest_hash_does_not_depend_on_where_the_data_lies(tmp_path, monkeypatch):
    data = make_dataset(tmp_path / "data", ("ivory", "not_ivory"), per_label=3)
    absolute = manifest_hash(assign_splits(load_samples(data), val_fraction=0.3, calib_fraction=0.0))
    data.rename(tmp_path / "elsewhere")
    monkeypatch.chdir(tmp_path)
    relative = assign_splits(load_samples(Path("elsewhere")), val_fraction=0.3, calib_fraction=0.0)
    assert manifest_hash(relative) == absolute
    relabelled = [replace(s, label="ivory") for s in relative]
    assert manifest_hash(relabelled) != absolute
