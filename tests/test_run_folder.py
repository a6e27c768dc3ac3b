"""What a training run leaves behind and later steps read: the recorded split, safe checkpoints, one-line errors."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

pytest.importorskip("torch", reason="training tests need the [train] extra: pip install '.[train]'")

import torch  # noqa: E402

from conftest import make_dataset, make_photo  # noqa: E402
from training import export  # noqa: E402
from training.checkpoint import load_checkpoint, load_training_state, save_checkpoint  # noqa: E402
from training.data import DataSource, manifest_hash, prepare_samples  # noqa: E402
from training.errors import CheckpointError, DataError, TrainingError, run_command  # noqa: E402
from training.split import SPLIT_FILE, load_split, read_split, write_split  # noqa: E402
from training.checks import resolve_prohibited  # noqa: E402


def _csv_source(folder: Path) -> Path:
    """Eight photos of two labels listed in a manifest, so a label can be changed without touching a photo."""
    folder.mkdir(parents=True)
    rows = ["path,label,source_id"]
    for index in range(8):
        label = "ivory" if index % 2 else "not_ivory"
        make_photo(label, index).save(folder / f"p{index}.jpg")
        rows.append(f"p{index}.jpg,{label},object{index}")
    (folder / "manifest.csv").write_text("\n".join(rows) + "\n")
    return folder


@pytest.fixture
def recorded(tmp_path) -> dict:
    """A split of a small CSV source, recorded in a run folder as training records it."""
    data = _csv_source(tmp_path / "data")
    samples, report = prepare_samples(data, val_fraction=0.3, calib_fraction=0.3)
    split = write_split(tmp_path / "run", samples, report, [DataSource(data)], {})
    return {"data": data, "samples": samples, "split": split, "file": tmp_path / "run" / SPLIT_FILE}


def test_the_recorded_split_reads_back_as_training_made_it(recorded):
    split = read_split(recorded["file"])
    assert split.samples == recorded["samples"]
    assert split.manifest_sha256 == manifest_hash(recorded["samples"]) == recorded["split"].manifest_sha256


def test_the_recorded_split_follows_its_data_to_another_folder(recorded, tmp_path):
    moved = tmp_path / "moved" / "data"
    shutil.move(recorded["data"], moved)
    split = read_split(recorded["file"], [moved])
    assert [s.path for s in split.samples] == [moved / s.path.name for s in recorded["samples"]]
    assert [(s.label, s.split, s.group) for s in split.samples] == [
        (s.label, s.split, s.group) for s in recorded["samples"]]


@pytest.mark.parametrize("change, problem", [
    (lambda data: make_photo("ivory", 99).save(data / "p3.jpg"), "1 photo\\(s\\) changed"),
    (lambda data: (data / "p3.jpg").unlink(), "1 photo\\(s\\) gone or unreadable"),
    (lambda data: (data / "manifest.csv").write_text(
        (data / "manifest.csv").read_text().replace("p3.jpg,ivory", "p3.jpg,not_ivory")), "1 photo\\(s\\) relabelled"),
])
def test_a_split_whose_photos_changed_on_disk_is_refused_naming_them(recorded, change, problem):
    change(recorded["data"])
    with pytest.raises(DataError, match=f"{problem} \\(e.g. .*p3.jpg\\).*restore the data"):
        read_split(recorded["file"])


def test_photos_added_after_training_are_not_part_of_the_split(recorded):
    make_photo("ivory", 50).save(recorded["data"] / "new.jpg")
    with (recorded["data"] / "manifest.csv").open("a") as manifest:
        manifest.write("new.jpg,ivory,object50\n")
    assert read_split(recorded["file"]).samples == recorded["samples"]


def _training(recorded, out: Path, manifest: str | None = None) -> dict:
    """What a checkpoint or model file records of its run: the config and the data's fingerprint."""
    return {"config": {"out": str(out), "data": [{"path": str(recorded["data"])}], "val_fraction": 0.3,
                       "calib_fraction": 0.3},
            "data": {"manifest_sha256": manifest or recorded["split"].manifest_sha256}}


def test_load_split_reads_the_record_and_never_splits_again(recorded, monkeypatch):
    monkeypatch.setattr("training.split.prepare_samples_like", _must_not_split)
    assert load_split(_training(recorded, recorded["file"].parent)) == recorded["samples"]


def test_without_a_record_the_split_is_rebuilt_explicitly_and_checked(recorded, tmp_path, capsys):
    assert load_split(_training(recorded, tmp_path / "elsewhere")) == recorded["samples"]
    assert "no recorded split of this model" in capsys.readouterr().err
    with pytest.raises(DataError, match="no longer gives the split this model was trained on"):
        load_split(_training(recorded, tmp_path / "elsewhere", manifest="0" * 64))


def test_a_split_file_of_another_run_is_refused_when_named(recorded, monkeypatch):
    monkeypatch.setattr("training.split.prepare_samples_like", _must_not_split)
    with pytest.raises(DataError, match="another run's split"):
        load_split(_training(recorded, recorded["file"].parent, manifest="0" * 64), split_file=recorded["file"])


def _must_not_split(*_):
    raise AssertionError("the split was rebuilt although a matching record exists")


def test_checkpoint_keeps_tensors_and_facts(tmp_path):
    weights = {"layer.weight": torch.arange(6.0).reshape(2, 3).t(), "layer.steps": torch.tensor(3)}  # a view, an int
    facts = {"labels": ["ivory", "not_ivory"], "metrics": {"accuracy": 0.5}}
    save_checkpoint(tmp_path / "c.safetensors", facts, weights)
    checkpoint = load_checkpoint(tmp_path / "c.safetensors")
    assert {key: checkpoint[key] for key in facts} == facts
    assert all(torch.equal(checkpoint["state_dict"][name], tensor) for name, tensor in weights.items())


class _Payload:
    """Unpickling this runs code: it creates the file `marker`."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return Path.touch, (self.marker,)


def test_a_checkpoint_holding_a_pickled_object_is_refused_without_running_it(tmp_path, capsys):
    marker, crafted = tmp_path / "code-ran", tmp_path / "checkpoint.safetensors"
    torch.save({"format": "wildvision-checkpoint/1", "state_dict": {}, "config": _Payload(marker)}, crafted)
    state = shutil.copy(crafted, tmp_path / "training-state-0123.pt")  # as training's resume state is named
    with pytest.raises(CheckpointError, match="never loaded"):
        load_checkpoint(crafted)
    with pytest.raises(CheckpointError, match="training state this version can load safely"):
        load_training_state(state)
    assert export.main(["--checkpoint", str(crafted), "--out", str(tmp_path / "m.onnx")]) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: ") and "never loaded (it could run code)" in error and error.count("\n") == 1
    assert not marker.exists()
    torch.load(state, weights_only=False)  # the file really is dangerous: a pickle-loading reader runs the payload
    assert marker.exists()


def test_a_safetensors_file_without_wildvision_facts_is_refused(tmp_path):
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, tmp_path / "other.safetensors")
    with pytest.raises(CheckpointError, match="format None"):
        load_checkpoint(tmp_path / "other.safetensors")


def test_commands_report_input_errors_in_one_line_and_let_bugs_keep_their_traceback(capsys):
    def refused() -> int:
        raise DataError("no photos in data/")

    def bug() -> int:
        raise ValueError("a programming error")

    assert run_command(refused) == 2 and capsys.readouterr().err == "error: no photos in data/\n"
    with pytest.raises(ValueError, match="a programming error"):
        run_command(bug)
    assert issubclass(export.ParityError, TrainingError) and export.ParityError.exit_status == 1


def test_prohibited_labels_are_those_named_else_every_label_not_named_not():
    labels = ["horn", "ivory", "lookalike", "not_ivory"]
    assert resolve_prohibited(labels, None) == ["horn", "ivory", "lookalike"]
    assert resolve_prohibited(labels, ["ivory"]) == ["ivory"]
    with pytest.raises(DataError, match="not in the data: \\['ivroy'\\]"):
        resolve_prohibited(labels, ["ivroy"])
    with pytest.raises(DataError, match="no prohibited label"):
        resolve_prohibited(["not_ivory", "not_horn"], None)


def test_the_run_records_its_split_and_its_prohibited_labels(tiny_run):
    checkpoint = load_checkpoint(tiny_run["checkpoint"])
    assert checkpoint["config"]["prohibited"] == list(checkpoint["operating_points"]) == ["ivory", "horn"]
    split = read_split(tiny_run["run"] / SPLIT_FILE)
    assert split.fingerprint() == {key: checkpoint["data"][key] for key in ("manifest_sha256", "content_sha256")}
    assert {s.path.parent.name for s in split.samples} == {"ivory", "horn", "not_ivory"}


def test_a_folder_per_label_source_reads_back_too(tmp_path):
    data = make_dataset(tmp_path / "d", ("ivory", "not_ivory"), per_label=4)
    samples, report = prepare_samples(data, val_fraction=0.5, calib_fraction=0.0)
    write_split(tmp_path / "run", samples, report, [DataSource(data)], {})
    assert read_split(tmp_path / "run" / SPLIT_FILE).samples == samples
