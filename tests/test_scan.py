"""Batch scanning and the command line: one record per input, errors as records, formats, resume without loss."""

from __future__ import annotations

import io
import json
import os
import re
import signal
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest

from conftest import REPO, make_photo
from wildvision import Classifier
from wildvision.cli import main
from wildvision.records import OPTIONAL_PARTS, read_records, write_records
from wildvision.scan import (
    ResumeError, ScanRecord, TerminalProgress, check_same_run, files_from_list, find_images, layout_of, run_facts, scan,
    scan_to_file,
)

# A plain scan's records: every field but the optional parts (match, text) that only some scans add.
RECORD_FIELDS = set(ScanRecord.__dataclass_fields__) - set(OPTIONAL_PARTS)


@pytest.fixture(scope="module")
def model(tiny_run) -> Path:
    return tiny_run["model"]


@pytest.fixture(scope="module")
def classifier(model) -> Classifier:
    return Classifier(model)


@pytest.fixture
def archive(tmp_path) -> tuple[Path, dict[str, str | None]]:
    """A photo tree with good and awkward files; maps each image file to its expected error category (None: scored)."""
    root = tmp_path / "archive"
    (root / "shop" / "2024").mkdir(parents=True)
    expected: dict[str, str | None] = {}
    for index in range(7):
        name = f"shop/2024/item{index}.jpg" if index % 2 else f"item{index}.png"
        make_photo("ivory" if index % 3 else "not_ivory", index).save(root / name)
        expected[name] = None
    (root / "notes.txt").write_text("not a photo, not an image suffix: ignored")
    (root / "fake.jpg").write_text("a text file called .jpg")
    expected["fake.jpg"] = "not_an_image"
    (root / "empty.png").write_bytes(b"")
    expected["empty.png"] = "empty"
    make_photo("ivory", 99, size=(400, 300)).save(root / "whole.jpg")
    (root / "shop" / "truncated.jpg").write_bytes((root / "whole.jpg").read_bytes()[:700])
    expected["shop/truncated.jpg"] = "corrupt"
    expected["whole.jpg"] = None
    (root / "UPPER.JPEG").write_bytes((root / "item0.png").read_bytes())
    expected["UPPER.JPEG"] = None
    os.symlink(root, root / "shop" / "loop")  # a symlink loop must not recurse forever
    return root, expected


def jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_one_record_per_image_file_with_errors_as_records(archive, classifier, tmp_path):
    root, expected = archive
    output = tmp_path / "out.jsonl"
    summary = scan_to_file(find_images(root), output, classifier, batch_size=3)
    records = jsonl(output)
    assert sorted(r["path"] for r in records) == sorted(expected)
    for record in records:
        assert set(record) == RECORD_FIELDS
        assert (record["model_name"], record["model_version"]) == (classifier.info.name, classifier.info.version)
        category = expected[record["path"]]
        if category is None:
            assert record["error"] is None and record["decision"] in ("allow", "review", "block")
            assert (record["label"] is None) == (record["decision"] == "allow"), "label agrees with decision"
            assert record["top_label"] == max(record["scores"], key=record["scores"].get)
            assert sum(record["scores"].values()) == pytest.approx(1.0)
        else:
            assert record["error_category"] == category and record["error"] and record["scores"] is None
    assert (summary.scored, summary.failed) == (9, 3)
    assert summary.failures == {"not_an_image": 1, "empty": 1, "corrupt": 1}
    assert not list(tmp_path.glob("*.partial.jsonl")), "the journal is removed once the final file is written"


def test_scores_equal_the_python_api(archive, classifier, tmp_path):
    root, _ = archive
    scan_to_file(find_images(root), tmp_path / "o.jsonl", classifier)
    for record in jsonl(tmp_path / "o.jsonl"):
        if record["error"] is None:
            assert record["scores"] == pytest.approx(classifier.predict(root / record["path"]).scores, abs=1e-6)


def test_batches_scored_side_by_side_give_the_same_records_in_input_order(archive, model):
    root, _ = archive
    one_at_a_time = list(scan(find_images(root), Classifier(model), batch_size=2))
    side_by_side = list(scan(find_images(root), Classifier(model, threads=1), batch_size=2, workers=3, scorers=3))
    assert [r.path for r in side_by_side] == [item.name for item in find_images(root)]
    assert [r.error_category for r in side_by_side] == [r.error_category for r in one_at_a_time]
    for parallel, serial in zip(side_by_side, one_at_a_time):
        assert parallel.scores == (pytest.approx(serial.scores, abs=1e-5) if serial.scores else None)


def test_an_interrupted_scan_resumes_without_loss_or_duplicates(archive, classifier, tmp_path):
    root, _ = archive
    complete = tmp_path / "complete.jsonl"
    scan_to_file(find_images(root), complete, classifier)
    lines = complete.read_text().splitlines(keepends=True)
    output = tmp_path / "resumed.jsonl"
    journal = tmp_path / "resumed.jsonl.partial.jsonl"
    journal.write_text("".join(lines[:4]) + lines[4][: len(lines[4]) // 2])  # killed mid-write
    summary = scan_to_file(find_images(root), output, classifier)
    assert summary.already_done == 4
    assert output.read_text().splitlines() == complete.read_text().splitlines()


def test_rescanning_a_grown_archive_adds_only_new_photos(archive, classifier, tmp_path):
    root, expected = archive
    output = tmp_path / "o.csv"
    scan_to_file(find_images(root), output, classifier)
    make_photo("ivory", 123).save(root / "new.png")
    summary = scan_to_file(find_images(root), output, classifier)
    assert (summary.already_done, summary.scored + summary.failed) == (len(expected), 1)
    assert sorted(r["path"] for r in read_records(output)) == sorted([*expected, "new.png"])


def test_continuing_an_output_compares_only_the_facts_its_earlier_run_left(archive, classifier, tmp_path):
    """scan (from its first record) and spark (from its note) check the same facts; an error record states no
    thresholds or labels, so those are not held against it, while anything it does state is."""
    now = run_facts(classifier, layout_of(classifier))
    an_error_record = {"model": now["model"], "match_index": False, "read_text": None}
    check_same_run(an_error_record, now, "out.jsonl")
    with pytest.raises(ResumeError, match="holds records of .* but this run scores with") as refused:
        check_same_run({**now, "thresholds": "ivory=0.5/0.9"}, now, "out.jsonl")
    assert "thresholds ivory=0.5/0.9" in str(refused.value).split("but this run")[0]
    with pytest.raises(ResumeError, match="with --match-index"):
        check_same_run({**an_error_record, "match_index": True}, now, "out.jsonl")
    root, _ = archive
    output = tmp_path / "o.jsonl"
    scan_to_file(find_images(root), output, classifier)
    first = json.loads(output.read_text().splitlines()[0])
    output.write_text(json.dumps({**first, "model_digest": "sha256:0000000000000000"}) + "\n")
    with pytest.raises(ResumeError, match="sha256:0000000000000000"):
        scan_to_file(find_images(root), output, classifier)


def test_sigkill_at_any_moment_then_rerun_loses_and_duplicates_nothing(model, tmp_path):
    root = tmp_path / "many"
    root.mkdir()
    for index in range(60):
        make_photo("ivory" if index % 2 else "not_ivory", index).save(root / f"p{index:03d}.png")
    output = tmp_path / "out.jsonl"
    command = [sys.executable, "-m", "wildvision", "--model", str(model), "scan", str(root), "-o", str(output),
               "--batch-size", "2", "--workers", "1"]
    process = subprocess.Popen(command, cwd=REPO, stderr=subprocess.DEVNULL)
    journal = tmp_path / "out.jsonl.partial.jsonl"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and (not journal.exists() or len(journal.read_bytes().splitlines()) < 10):
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not output.exists(), "the final file appears only when the scan is complete"
    recorded_before = len(journal.read_bytes().splitlines())
    assert 10 <= recorded_before < 60
    assert subprocess.run(command, cwd=REPO, stderr=subprocess.PIPE).returncode == 0
    paths = [record["path"] for record in jsonl(output)]
    assert sorted(paths) == sorted(f"p{index:03d}.png" for index in range(60))


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".parquet"])
def test_output_formats_round_trip(archive, classifier, tmp_path, suffix):
    root, _ = archive
    reference = tmp_path / "reference.jsonl"
    scan_to_file(find_images(root), reference, classifier)
    records = jsonl(reference)
    converted = tmp_path / f"records{suffix}"
    write_records(records, converted, layout_of(classifier))
    assert list(read_records(converted)) == records


def test_file_list_input_records_every_listed_path(archive, classifier, tmp_path):
    root, _ = archive
    listed = [str(root / "item0.png"), str(root / "notes.txt"), str(root / "vanished.jpg")]
    scan_to_file(files_from_list(io.StringIO("\n".join(listed) + "\n")), tmp_path / "o.jsonl", classifier)
    records = {r["path"]: r for r in jsonl(tmp_path / "o.jsonl")}
    assert list(records) == listed
    assert records[listed[0]]["error"] is None
    assert records[listed[1]]["error_category"] == "not_an_image"
    assert records[listed[2]]["error_category"] == "unreadable"


def test_finding_images_ignores_other_files_and_loops(archive):
    root, expected = archive
    assert sorted(item.name for item in find_images(root)) == sorted(expected)


def test_cli_scan_predict_and_info(archive, model, tmp_path, capsys, monkeypatch):
    root, _ = archive
    output = tmp_path / "cli.parquet"
    assert main(["--model", str(model), "scan", str(root), "-o", str(output)]) == 1  # 3 photos failed
    assert "scored 9, failed 3" in capsys.readouterr().err
    monkeypatch.setattr(sys, "stdin", io.StringIO(f"{root / 'item0.png'}\n"))
    assert main(["--model", str(model), "scan", "--files-from", "-", "-o", str(tmp_path / "stdin.csv")]) == 0
    assert "scored 1, failed 0" in capsys.readouterr().err
    assert main(["--model", str(model), "predict", str(root / "item0.png"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["decision"] in ("allow", "review", "block")
    assert main(["--model", str(model), "predict", str(root / "item0.png"), str(root / "fake.jpg")]) == 1
    assert "fake.jpg: error: not an image" in capsys.readouterr().out
    assert main(["--model", str(model), "info"]) == 0
    info = capsys.readouterr().out
    assert "labels     horn, ivory, not_ivory" in info
    assert re.search(r"flagged    \S+: [\d.]+% of \d+ harmless photos, [\d.]+% of \d+ prohibited photos", info)


@pytest.mark.parametrize("arguments, message", [
    (["scan", "{tmp}/absent", "-o", "{tmp}/o.jsonl"], "not a folder"),
    (["scan", "{tmp}", "-o", "{tmp}/o.xlsx"], "unknown output format"),
    (["scan", "-o", "{tmp}/o.jsonl"], "either a FOLDER or --files-from"),
])
def test_cli_bad_arguments_get_a_clear_message(model, tmp_path, capsys, arguments, message):
    arguments = [a.format(tmp=tmp_path) for a in arguments]
    assert main(["--model", str(model), *arguments]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("option, value, message", [
    ("--threads", "0", "must be at least 1, got 0"),
    ("--batch-size", "many", "not a whole number: 'many'"),
])
def test_cli_counts_must_be_positive_whole_numbers(model, tmp_path, capsys, option, value, message):
    with pytest.raises(SystemExit) as stop:
        main(["--model", str(model), "scan", str(tmp_path), "-o", str(tmp_path / "o.jsonl"), option, value])
    assert stop.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "o.jsonl").exists()


def test_cli_refuses_a_file_that_is_not_a_model(tmp_path, capsys):
    not_a_model = tmp_path / "m.onnx"
    not_a_model.write_text("nope")
    assert main(["--model", str(not_a_model), "info"]) == 2
    assert "not a readable ONNX model" in capsys.readouterr().err


def test_scan_exits_1_when_any_photo_failed_and_0_when_all_scored(model, tmp_path, capsys):
    good = tmp_path / "good"
    good.mkdir()
    make_photo("ivory", 1).save(good / "a.png")
    assert main(["--model", str(model), "scan", str(good), "-o", str(tmp_path / "good.jsonl")]) == 0
    bad = tmp_path / "bad"
    bad.mkdir()
    make_photo("ivory", 1).save(bad / "a.png")
    (bad / "b.jpg").write_text("not a photo")
    assert main(["--model", str(model), "scan", str(bad), "-o", str(tmp_path / "bad.jsonl")]) == 1
    assert "scored 1, failed 1 (not_an_image 1)" in capsys.readouterr().err
    assert len(jsonl(tmp_path / "bad.jsonl")) == 2, "the failed photo has its record all the same"


@pytest.mark.parametrize("source, message", [
    ("folder", "no image files under"),
    ("list", "holds no paths"),
])
def test_an_empty_folder_or_an_empty_list_is_an_error_that_writes_nothing(model, tmp_path, capsys, source, message):
    (tmp_path / "empty").mkdir()
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("no photo here")
    (tmp_path / "list.txt").write_text("\n")
    given = [str(tmp_path / "notes")] if source == "folder" else ["--files-from", str(tmp_path / "list.txt")]
    output = tmp_path / "o.jsonl"
    assert main(["--model", str(model), "scan", *given, "-o", str(output)]) == 2
    assert message in capsys.readouterr().err
    assert not output.exists()


def test_a_list_that_matches_no_file_is_an_error_that_says_urls_are_not_fetched(model, tmp_path, capsys):
    listed = tmp_path / "urls.txt"
    listed.write_text("https://example.com/a.jpg\nhttps://example.com/b.jpg\n")
    assert main(["--model", str(model), "scan", "--files-from", str(listed), "-o", str(tmp_path / "o.jsonl")]) == 2
    err = capsys.readouterr().err
    assert "2 listed paths are URLs, which scan does not fetch" in err
    assert "none of the 2 listed paths could be read" in err


def test_a_mistyped_option_is_refused_under_its_commands_usage_with_the_closest_option(tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        main(["scan", str(tmp_path), "-o", str(tmp_path / "o.jsonl"), "--read-txt"])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: wildvision scan"), err
    assert "unrecognized arguments: --read-txt (did you mean --read-text?)" in err


def test_every_exit_status_is_stated_in_the_help(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert "exit statuses:" in out
    assert all(re.search(rf"^  {status}\b", out, re.MULTILINE) for status in (0, 1, 2, 141))


def test_info_into_a_pipe_that_closes_ends_quietly(model):
    """`wildvision info | head -5`: the reader closes the pipe before everything is written."""
    process = subprocess.Popen([sys.executable, "-m", "wildvision", "--model", str(model), "info"], cwd=REPO,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    process.stdout.close()  # before the command writes a line: every write meets a closed pipe
    _, err = process.communicate(timeout=60)
    assert err.decode() == ""
    assert process.returncode == 141


def test_progress_on_a_terminal_counts_of_the_total_with_a_rate_and_an_eta(monkeypatch, capsys):
    clock = iter([0.0, 10.0])
    monkeypatch.setattr(sys.modules["wildvision.scan"], "time", types.SimpleNamespace(monotonic=lambda: next(clock)))
    progress = TerminalProgress(total=1000)
    progress.enabled = True
    progress(100)  # an earlier run's 84 records and this run's first batch of 16
    progress(600)  # 500 more in 10 s: 50/s, 400 to go
    assert capsys.readouterr().err.split("\r")[-1].strip() == "600/1000 photos  50.0/s  ETA 8s"
