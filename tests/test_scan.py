"""Batch scanning and the command line: one record per image file, errors as records, resume without loss."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from PIL import Image

from conftest import make_photo
from wildvision import Classifier
from wildvision.cli import main
from wildvision.scan import ScanRecord, find_images, scan_to_jsonl

RECORD_FIELDS = set(ScanRecord.__dataclass_fields__)


@pytest.fixture(scope="module")
def classifier(shipped_model) -> Classifier:
    return Classifier(shipped_model)


@pytest.fixture
def archive(tmp_path) -> tuple[Path, dict[str, str | None]]:
    """A photo tree with good and awkward files; maps each image file to the error it should get (None: scored)."""
    root = tmp_path / "archive"
    (root / "shop" / "2024").mkdir(parents=True)
    expected: dict[str, str | None] = {}
    for index in range(7):
        name = f"shop/2024/item{index}.jpg" if index % 2 else f"item{index}.png"
        make_photo("ivory" if index % 3 else "not_ivory", index).save(root / name)
        expected[name] = None
    (root / "notes.txt").write_text("not a photo, not an image suffix: ignored")
    (root / "fake.jpg").write_text("a text file called .jpg")
    expected["fake.jpg"] = "not an image"
    (root / "empty.png").write_bytes(b"")
    expected["empty.png"] = "empty"
    good = (root / "item0.png").read_bytes()
    make_photo("ivory", 99, size=(400, 300)).save(root / "whole.jpg")
    (root / "shop" / "truncated.jpg").write_bytes((root / "whole.jpg").read_bytes()[:700])
    expected["shop/truncated.jpg"] = "truncated"
    expected["whole.jpg"] = None
    (root / "UPPER.JPEG").write_bytes(good)
    expected["UPPER.JPEG"] = None
    os.symlink(root, root / "shop" / "loop")  # a symlink loop must not recurse forever
    return root, expected


def read_records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_one_record_per_image_file_with_errors_as_records(archive, classifier, tmp_path):
    root, expected = archive
    output = tmp_path / "out.jsonl"
    summary = scan_to_jsonl(root, output, classifier, batch_size=3)
    records = read_records(output)
    assert sorted(r["path"] for r in records) == sorted(expected)
    for record in records:
        assert set(record) == RECORD_FIELDS
        assert record["model_version"] == classifier.info.version
        reason = expected[record["path"]]
        if reason is None:
            assert record["error"] is None and record["decision"] in ("allow", "review", "block")
            assert sum(record["scores"].values()) == pytest.approx(1.0)
        else:
            assert reason in record["error"] and record["scores"] is None
    assert (summary.scored, summary.failed) == (9, 3)


def test_an_interrupted_scan_resumes_without_loss_or_duplicates(archive, classifier, tmp_path):
    root, expected = archive
    complete = tmp_path / "complete.jsonl"
    scan_to_jsonl(root, complete, classifier)
    lines = complete.read_text().splitlines(keepends=True)
    interrupted = tmp_path / "interrupted.jsonl"
    interrupted.write_text("".join(lines[:4]) + lines[4][: len(lines[4]) // 2])  # killed mid-write
    summary = scan_to_jsonl(root, interrupted, classifier)
    assert summary.skipped_already_done == 4
    assert interrupted.read_text().splitlines() == complete.read_text().splitlines()


def test_finding_images_ignores_other_files_and_loops(archive):
    root, expected = archive
    assert sorted(p.relative_to(root).as_posix() for p in find_images(root)) == sorted(expected)


def test_cli_scan_predict_and_info(archive, tmp_path, capsys):
    root, _ = archive
    output = tmp_path / "cli.jsonl"
    assert main(["scan", str(root), "-o", str(output)]) == 0
    assert "scored 9, failed 3" in capsys.readouterr().err
    assert main(["predict", str(root / "item0.png"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["decision"] in ("allow", "review", "block")
    assert main(["predict", str(root / "item0.png"), str(root / "fake.jpg")]) == 1
    assert "fake.jpg: error: not an image" in capsys.readouterr().out
    assert main(["info"]) == 0
    assert "labels" in capsys.readouterr().out


def test_cli_bad_arguments_get_a_clear_message(tmp_path, capsys):
    assert main(["scan", str(tmp_path / "absent"), "-o", str(tmp_path / "o.jsonl")]) == 2
    assert "not a folder" in capsys.readouterr().err
    not_a_model = tmp_path / "m.onnx"
    not_a_model.write_text("nope")
    assert main(["--model", str(not_a_model), "info"]) == 2
    assert "not a readable ONNX model" in capsys.readouterr().err
