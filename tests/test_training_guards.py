"""Retraining that cannot fail silently: label typos, rare labels, unmatched rules, identities, interruptions, logs."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("torch", reason="training tests need the [train] extra: pip install '.[train]'")

from conftest import make_dataset  # noqa: E402
from training.checks import check_labels, photo_table, similar_labels  # noqa: E402
from training.checkpoint import load_checkpoint  # noqa: E402
from training.data import Sample, prepare_samples  # noqa: E402
from training.errors import DataError  # noqa: E402


def _samples(counts: dict[tuple[str, str], int]) -> list[Sample]:
    return [Sample(Path(f"{label}{split}{i}.jpg"), label, f"{label}{split}{i}", split)
            for (label, split), count in counts.items() for i in range(count)]


def test_labels_spelt_two_ways_are_refused_with_the_fix_named():
    assert similar_labels(["ivory", "ivroy", "Ivory", "not_ivory", "not ivory", "horn", "bone"]) == [
        ("ivory", "ivroy"), ("ivory", "Ivory"), ("ivroy", "Ivory"), ("not_ivory", "not ivory")]
    samples = _samples({(label, split): 20 for label in ("ivory", "ivroy") for split in ("train", "calib", "val")})
    with pytest.raises(DataError, match="'ivory' and 'ivroy'.*--allow-similar-labels"):
        check_labels(samples, ["ivory", "ivroy"], allow_rare=False, allow_similar=False)
    check_labels(samples, ["ivory", "ivroy"], allow_rare=False, allow_similar=True)


def test_too_few_photos_of_a_label_in_a_split_is_refused_unless_allowed():
    counts = {("ivory", "train"): 50, ("ivory", "calib"): 5, ("ivory", "val"): 5,
              ("rhino_horn", "train"): 4, ("rhino_horn", "calib"): 1, ("rhino_horn", "val"): 3}
    samples = _samples(counts)
    with pytest.raises(DataError, match=r"'rhino_horn' has 4 train.*'rhino_horn' has 1 calib.*--allow-rare"):
        check_labels(samples, ["ivory", "rhino_horn"], allow_rare=False, allow_similar=False)
    check_labels(samples, ["ivory", "rhino_horn"], allow_rare=True, allow_similar=False)
    table = photo_table(samples, ["ivory", "rhino_horn"]).splitlines()
    assert table[0].split() == ["label", "train", "calib", "val"] and table[2].split() == ["rhino_horn", "4", "1", "3"]


def test_a_relabel_rule_that_matches_nothing_is_refused(tmp_path):
    data = make_dataset(tmp_path / "data", ("ivory", "not_ivory"), per_label=3)
    with pytest.raises(DataError, match=r"horn_antlr=lookalike.*match no photo's kind"):
        prepare_samples(data, val_fraction=0.2, calib_fraction=0.2, relabel={"horn_antlr": "lookalike"})


def test_a_rare_label_always_gets_enough_calib_photos(tmp_path):
    rows = ["path,label,group,split"] + [f"x{i}.jpg,common,c{i},train" for i in range(300)]
    rows += [f"y{i}.jpg,rare,r{i},train" for i in range(6)]
    (tmp_path / "d.csv").write_text("\n".join(rows))
    for fraction in (0.0, 0.01):  # a share that leaves six groups almost surely without a calib photo
        samples, _ = prepare_samples(tmp_path / "d.csv", val_fraction=0.0, calib_fraction=fraction)
        assert sum(s.label == "rare" and s.split == "calib" for s in samples) == 2
        assert sum(s.label == "rare" and s.split == "train" for s in samples) == 4


def test_a_rare_label_cannot_swamp_the_others():
    """With 38 photos of one label among 3,300, the best constant answer must not be the rare label."""
    import torch

    from training.fine_tune import BalancedLoss

    targets = torch.tensor([0] * 38 + [1] * 300 + [2] * 3000)
    loss = BalancedLoss(targets, 3, label_smoothing=0.1)
    assert loss.weights.max() / loss.weights.min() <= BalancedLoss.MAX_CLASS_WEIGHT + 1e-6
    bias = torch.zeros(3, requires_grad=True)
    optimiser = torch.optim.SGD([bias], lr=0.5)
    for _ in range(300):
        optimiser.zero_grad()
        loss(bias.expand(len(targets), 3), targets).backward()
        optimiser.step()
    assert int(bias.argmax()) != 0


def test_a_model_no_better_than_the_commonest_label_fails_the_run(tmp_path, capsys):
    from training.train import _check_learnt

    val = _samples({("ivory", "val"): 10, ("not_ivory", "val"): 30})
    assert _check_learnt({"accuracy": 0.75}, val, tmp_path) == 1
    assert "always answering 'not_ivory' scores" in capsys.readouterr().err
    assert _check_learnt({"accuracy": 0.8}, val, tmp_path) == 0


def test_a_retrained_model_never_takes_a_shipped_identity(tmp_path, capsys):
    from training.train import _shipped_identities, model_identity
    from wildvision import Classifier

    shipped = Classifier().info
    samples = _samples({("ivory", "train"): 2})
    identity = model_identity(shipped.name, shipped.version, samples)
    assert identity.startswith(f"{shipped.full_name}+retrained.") and identity not in _shipped_identities()
    assert "is a shipped model's identity" in capsys.readouterr().out
    assert model_identity("my-model", "0.3.0", samples) == "my-model@0.3.0"


def _args(data: Path, out: Path) -> list[str]:
    return ["--data", str(data), "--out", str(out), "--image-size", "64", "--views", "1", "--epochs", "2",
            "--batch-size", "8", "--lr", "3e-3", "--val-fraction", "0.25", "--calib-fraction", "0.3", "--workers", "0",
            "--threads", "1", "--allow-rare"]


def test_an_interrupted_feature_cache_resumes_and_gives_the_same_model(tmp_path, monkeypatch, capsys):
    import torch

    from training import frozen_features, train

    data = make_dataset(tmp_path / "data", ("ivory", "not_ivory"), per_label=30)  # three batches of 32 views
    monkeypatch.setattr(frozen_features._CachedParts, "ROWS_PER_PART", 8)  # a part per batch
    assert train.main(_args(data, tmp_path / "straight")) == 0

    write = frozen_features._CachedParts._write

    def killed_after_two_parts(self) -> None:
        write(self)
        if len(list(self.folder.glob("part-*.pt"))) >= 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(frozen_features._CachedParts, "_write", killed_after_two_parts)
    capsys.readouterr()
    assert train.main(_args(data, tmp_path / "resumed")) == 130
    assert "run the same command again to resume" in capsys.readouterr().err
    monkeypatch.setattr(frozen_features._CachedParts, "_write", write)
    assert train.main(_args(data, tmp_path / "resumed")) == 0
    assert "resuming the feature cache: 64 of " in capsys.readouterr().out  # two batches kept, not recomputed

    straight = load_checkpoint(tmp_path / "straight" / "checkpoint.safetensors")["state_dict"]
    resumed = load_checkpoint(tmp_path / "resumed" / "checkpoint.safetensors")["state_dict"]
    assert all(torch.allclose(straight[key].float(), resumed[key].float(), atol=1e-6) for key in straight)
    assert not list((tmp_path / "resumed").glob("*.parts"))


def test_input_errors_are_one_line(tmp_path, capsys):
    from training import train

    (tmp_path / "d.csv").write_text("path,kind\nx.jpg,a\n")
    assert train.main(_args(tmp_path / "d.csv", tmp_path / "run")) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("error: ") and "missing column(s) ['label']" in error and "\n" not in error
    assert train.main(_args(tmp_path / "absent", tmp_path / "run")) == 2
    assert "no dataset at" in capsys.readouterr().err


def test_progress_is_written_as_plain_lines_where_there_is_no_terminal(capsys):
    from training.progress import logged_progress

    assert list(logged_progress(range(5), "caching", interval_s=0.0)) == list(range(5))
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("caching: 1/5 batches") and len(lines) == 4  # the last batch is the run's own report


@pytest.mark.slow
def test_the_lookalikes_config_trains_as_the_readme_says(tmp_path, monkeypatch):
    """The README's three-label example on the real photos, at small settings: a rare label that must still train."""
    from conftest import REPO, SHARED_DATA
    from training import train

    if not SHARED_DATA.is_dir():
        pytest.skip(f"needs the shared labelled photos at {SHARED_DATA} (absent in a fresh clone)")
    monkeypatch.chdir(REPO)  # the config names its data relative to the checkout, as the README runs it
    out = tmp_path / "run"
    assert train.main(["--config", "training/configs/ivory-lookalikes.toml", "--out", str(out), "--image-size", "96",
                       "--views", "0", "--epochs", "3"]) == 0
    checkpoint = load_checkpoint(out / "checkpoint.safetensors")
    val = checkpoint["data"]["by_split"]["val"]
    baseline = max(val.values()) / sum(val.values())
    assert checkpoint["labels"] == ["ivory", "lookalike", "not_ivory"]
    assert checkpoint["metrics"]["accuracy"] >= baseline + 0.05
    assert checkpoint["metrics"]["per_label"]["lookalike"]["recall"] > 0


def test_no_training_function_takes_an_argparse_namespace():
    """Every training command reads its options into one frozen config (`training.options`); a Namespace travelling
    down the call stack hides which options a function reads and lets a typo become an AttributeError hours in."""
    import ast

    from conftest import REPO

    taking = []
    for path in sorted((REPO / "training").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                annotations = [arg.annotation for arg in [*node.args.args, *node.args.kwonlyargs] if arg.annotation]
                if any("Namespace" in ast.unparse(annotation) for annotation in annotations):
                    taking.append(f"{path.relative_to(REPO)}:{node.lineno} {node.name}")
    assert not taking, taking
