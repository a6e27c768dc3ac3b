"""Every file a platform receives, on the shipped model: damaged files of every format, animations, blank photos,
HEIC, files `scan` cannot score, thresholds files and the command line's options. All photos are generated here."""

from __future__ import annotations

import io
import json
import random
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from wildvision import Classifier, ImageLoadError, ResumeError, find_images, scan_to_file
from wildvision.cli import main
from wildvision.images import ERROR_CATEGORIES, IMAGE_SUFFIXES

FORMATS = {"JPEG": {}, "PNG": {}, "GIF": {}, "WEBP": {}, "TIFF": {}, "AVIF": {}, "HEIF": {}}
MUTANTS_PER_FORMAT = 60


@pytest.fixture(scope="module")
def classifier(shipped_model) -> Classifier:
    return Classifier(shipped_model)


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    if fmt == "HEIF":
        pytest.importorskip("pillow_heif", reason="HEIC needs the heic extra")
        from wildvision.images import _register_heif

        _register_heif()
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def photo(seed: int = 0, size: tuple[int, int] = (96, 72)) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def mutants(data: bytes, count: int, seed: int) -> list[bytes]:
    """`count` damaged copies of `data`: bytes overwritten, the file cut short, or both (seeded, so reproducible)."""
    rng = random.Random(seed)
    damaged = []
    for _ in range(count):
        copy = bytearray(data)
        kind = rng.choice(("overwrite", "truncate", "both"))
        if kind != "truncate":
            for _ in range(rng.randint(1, 8)):
                copy[rng.randrange(len(copy))] = rng.randrange(256)
        if kind != "overwrite":
            copy = copy[: rng.randrange(1, len(copy))]
        damaged.append(bytes(copy))
    return damaged


@pytest.fixture(scope="module")
def fuzzed() -> dict[str, list[bytes]]:
    animated = {"GIF": {"save_all": True, "append_images": [photo(1)]}, "WEBP": {"save_all": True,
                                                                               "append_images": [photo(1)]}}
    return {fmt: mutants(encode(photo(), fmt, **animated.get(fmt, {})), MUTANTS_PER_FORMAT, seed)
            for seed, fmt in enumerate(FORMATS)}


def test_every_damaged_file_scores_or_raises_image_load_error(classifier, fuzzed, recwarn):
    outcomes: dict[str, int] = {}
    for fmt, files in fuzzed.items():
        for data in files:
            try:
                classifier.predict(data)
                outcome = "scored"
            except ImageLoadError as error:  # anything else escaping fails the test with its traceback
                assert error.category in ERROR_CATEGORIES
                outcome = error.category
            outcomes[outcome] = outcomes.get(outcome, 0) + 1
    assert outcomes.get("corrupt", 0) > len(FORMATS) * MUTANTS_PER_FORMAT // 4, outcomes  # most damage is noticed
    assert "unreadable" not in outcomes  # kept for the file system's errors, never a decoder's
    # The answer is the outcome: no decoder warning reaches the host's log ("Truncated File Read" from a TIFF did).
    assert not [str(w.message) for w in recwarn if "PIL" in w.filename]


def test_scan_gives_every_damaged_file_one_record(classifier, fuzzed, tmp_path):
    folder = tmp_path / "uploads"
    folder.mkdir()
    suffixes = {"JPEG": ".jpg", "PNG": ".png", "GIF": ".gif", "WEBP": ".webp", "TIFF": ".tif", "AVIF": ".avif",
                "HEIF": ".heic"}
    for fmt, files in fuzzed.items():
        for index, data in enumerate(files[:20]):
            (folder / f"{fmt}-{index}{suffixes[fmt]}").write_bytes(data)
    output = tmp_path / "records.jsonl"
    summary = scan_to_file(find_images(folder), output, classifier)
    records = [json.loads(line) for line in output.read_text().splitlines()]
    assert sorted(record["path"] for record in records) == sorted(path.name for path in folder.iterdir())
    assert summary.scored + summary.failed == len(records)
    assert {record["error_category"] for record in records} <= {None, *ERROR_CATEGORIES}


@pytest.mark.parametrize("cut", [200, 600])
def test_a_jpeg_cut_short_is_corrupt_not_unreadable(classifier, cut):
    with pytest.raises(ImageLoadError) as caught:
        classifier.predict(encode(photo(size=(640, 480)), "JPEG")[:cut])
    assert caught.value.category == "corrupt"


def test_a_file_of_random_bytes_named_jpg_is_not_an_image(tmp_path):
    path = tmp_path / "random.jpg"
    path.write_bytes(np.random.default_rng(3).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    with pytest.raises(ImageLoadError) as caught:
        Classifier().predict(path)
    assert caught.value.category == "not_an_image"


def test_an_oversized_photo_is_refused_without_a_warning_on_stderr():
    result = subprocess.run([sys.executable, "-c", textwrap.dedent("""
        import io
        from PIL import Image
        from wildvision import ImageLoadError, load_image
        buffer = io.BytesIO()
        Image.new("1", (10_000, 10_000)).save(buffer, "PNG")  # 100 MP: PIL warns above 89 MP
        try:
            load_image(buffer.getvalue())
        except ImageLoadError as error:
            print(error.category)
    """)], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "too_large"
    assert "DecompressionBombWarning" not in result.stderr


def test_a_heic_photo_is_scored_with_the_extra(classifier):
    data = encode(photo(size=(320, 240)), "HEIF")
    assert data[4:12] == b"ftypheic"
    assert classifier.predict(data).decision in ("allow", "review", "block")


def test_a_heic_photo_without_the_extra_names_the_extra(tmp_path):
    path = tmp_path / "IMG_0001.HEIC"
    path.write_bytes(encode(photo(), "HEIF"))
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(f"""
        import sys
        sys.modules["pillow_heif"] = None  # as if the heic extra were not installed
        from wildvision import ImageLoadError, load_image
        try:
            load_image({str(path)!r})
        except ImageLoadError as error:
            print(error.category, error.reason)
    """)], capture_output=True, text=True, check=True)
    assert result.stdout.startswith("unsupported_format") and "wildvision[heic]" in result.stdout


def test_scan_picks_up_every_photo_format_and_counts_what_it_skips(tmp_path, capsys):
    folder = tmp_path / "phone"
    folder.mkdir()
    for suffix, fmt in ((".heic", "HEIF"), (".avif", "AVIF"), (".jfif", "JPEG"), (".JPE", "JPEG")):
        (folder / f"photo{suffix}").write_bytes(encode(photo(), fmt))
    (folder / "notes.txt").write_text("a seller's notes")
    (folder / "listing.json").write_text("{}")
    (folder / "README").write_text("no suffix")
    assert {".heic", ".avif", ".jfif", ".jpe"} <= IMAGE_SUFFIXES
    output = tmp_path / "records.csv"
    assert main(["scan", str(folder), "-o", str(output)]) == 0
    summary = capsys.readouterr().err
    assert "scored 4, failed 0" in summary
    assert "skipped 3 files that are not images ((no suffix) 1, .json 1, .txt 1)" in summary


def test_resuming_a_scan_with_another_precision_or_thresholds_is_refused(tmp_path, capsys):
    folder = tmp_path / "photos"
    folder.mkdir()
    for index in range(3):
        photo(index).save(folder / f"{index}.png")
    output = tmp_path / "records.csv"
    assert main(["scan", str(folder), "-o", str(output)]) == 0
    before = output.read_bytes()
    (folder / "3.png").write_bytes((folder / "0.png").read_bytes())  # something new to scan
    assert main(["scan", str(folder), "-o", str(output), "--precision", "int8"]) == 2
    assert "float32" in capsys.readouterr().err
    thresholds = tmp_path / "strict.json"
    thresholds.write_text('{"ivory": {"review": 0.5, "block": 0.9}}')
    assert main(["scan", str(folder), "-o", str(output), "--operating-points", str(thresholds)]) == 2
    assert "ivory=0.5/0.9" in capsys.readouterr().err
    assert output.read_bytes() == before  # nothing mixed in


def test_resuming_with_another_models_labels_is_refused_before_scoring(tmp_path, shipped_model):
    folder = tmp_path / "photos"
    folder.mkdir()
    photo().save(folder / "a.png")
    output = tmp_path / "records.csv"
    other = ",".join(["path", "label", "decision", "score_horn", "score_ivory", "score_not_ivory", "model_name"])
    output.write_text(other + "\nold.png,ivory,block,0.1,0.8,0.1,older\n")
    with pytest.raises(ResumeError, match="other columns"):
        scan_to_file(find_images(folder), output, Classifier(shipped_model))


def test_thresholds_file_decides_and_is_recorded(tmp_path, capsys):
    folder = tmp_path / "photos"
    folder.mkdir()
    photo().save(folder / "a.png")
    thresholds = tmp_path / "policy.toml"
    thresholds.write_text("[ivory]\nreview = 0.0\nblock = 0.0\n")
    output = tmp_path / "records.jsonl"
    assert main(["scan", str(folder), "-o", str(output), "--operating-points", str(thresholds)]) == 0
    record = json.loads(output.read_text())
    assert (record["decision"], record["thresholds"]) == ("block", "ivory=0/0")
    assert main(["predict", str(folder / "a.png"), "--json", "--operating-points", str(thresholds)]) == 0
    assert json.loads(capsys.readouterr().out)["decision"] == "block"


@pytest.mark.parametrize("content, message", [
    ('{"not_ivory": {"review": 0.2, "block": 0.9}}', "harmless labels"),
    ('{"ivory": {"review": 0.9, "block": 0.2}}', "review <= block"),
    ('{"ivory": {"review": 0.5}}', "exactly `review` and `block`"),
    ('{"ivory": [0.5, 0.9]}', "expected"),
    ("not json", "not valid JSON"),
])
def test_an_unsafe_thresholds_file_is_refused_with_a_message(tmp_path, capsys, content, message):
    thresholds = tmp_path / "policy.json"
    thresholds.write_text(content)
    assert main(["info", "--operating-points", str(thresholds)]) == 2
    assert message in capsys.readouterr().err


def test_a_thresholds_file_in_a_format_not_read_names_the_formats_that_are(tmp_path, capsys):
    thresholds = tmp_path / "policy.yaml"
    thresholds.write_text("ivory:\n  review: 0.8\n  block: 0.99\n")
    assert main(["info", "--operating-points", str(thresholds)]) == 2
    assert "thresholds files are JSON, or TOML when named .toml" in capsys.readouterr().err


@pytest.mark.parametrize("option, value", [("--max-pixels", "0"), ("--max-pixels", "-1"), ("--max-frames", "0"),
                                           ("--max-frames", "lots")])
def test_numeric_limits_are_validated(capsys, option, value):
    with pytest.raises(SystemExit) as stop:
        main(["info", option, value])
    assert stop.value.code == 2 and option in capsys.readouterr().err


def test_model_options_are_accepted_after_the_command(tmp_path, capsys):
    folder = tmp_path / "photos"
    folder.mkdir()
    photo().save(folder / "a.png")
    assert main(["scan", str(folder), "-o", str(tmp_path / "out.jsonl"), "--precision", "int8"]) == 0
    assert json.loads((tmp_path / "out.jsonl").read_text())["model_precision"] == "int8"
    assert main(["--precision", "int8", "predict", str(folder / "a.png"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["model_precision"] == "int8"
    model = Classifier(precision="int8").model_path
    assert main(["predict", str(folder / "a.png"), "--json", "--model", str(model)]) == 0
    assert json.loads(capsys.readouterr().out)["model_precision"] == "int8"


def test_the_pixel_limit_applies_to_scan(tmp_path, capsys):
    folder = tmp_path / "photos"
    folder.mkdir()
    photo(size=(200, 100)).save(folder / "a.png")
    output = tmp_path / "out.jsonl"
    assert main(["scan", str(folder), "-o", str(output), "--max-pixels", "10000"]) == 1  # the one photo is refused
    assert json.loads(output.read_text())["error_category"] == "too_large"


def test_an_explanation_is_faint_where_the_model_barely_suspects(classifier):
    harmless = Image.new("RGB", (320, 240), (40, 90, 160))
    harmless.paste(photo(size=(100, 80)), (20, 20))
    explanation = classifier.explain(harmless)
    assert explanation.score < classifier.info.operating_points["ivory"].review  # allowed, whatever the release
    assert explanation.heatmap.max() <= explanation.score + 1e-6  # not a full-strength hot spot
    overlay = np.asarray(explanation.overlay(), dtype=int)
    untinted = np.asarray(explanation.photo, dtype=int)
    assert np.abs(overlay[100:, 150:] - untinted[100:, 150:]).mean() < 20  # the photo shows through


def test_a_typed_program_sees_the_packages_own_types(tmp_path):
    pytest.importorskip("mypy", reason="the typing check needs mypy (in the test extra)")
    good = tmp_path / "good.py"
    good.write_text(textwrap.dedent("""
        from wildvision import Classifier, Prediction

        def decision(classifier: Classifier, path: str) -> str:
            prediction: Prediction = classifier.predict(path)
            return prediction.decision
    """))
    bad = tmp_path / "bad.py"
    bad.write_text("from wildvision import Classifier\n\ncount: int = Classifier().predict('a.jpg').decision\n")
    command = [sys.executable, "-m", "mypy", "--no-incremental", "--ignore-missing-imports", "--strict"]
    # Run from tmp_path so wildvision is found as an installed package, where only py.typed makes it typed.
    assert subprocess.run([*command, str(good)], cwd=tmp_path, capture_output=True, text=True).returncode == 0
    result = subprocess.run([*command, str(bad)], cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 1 and "Incompatible types in assignment" in result.stdout, result.stdout


def test_the_package_states_its_version():
    import wildvision

    assert wildvision.__version__ and wildvision.__version__ != "0+unknown"
    assert (Path(wildvision.__file__).parent / "py.typed").is_file()


def test_the_service_answers_every_damaged_file_without_a_5xx_and_names_the_model_file(classifier, fuzzed):
    pytest.importorskip("fastapi", reason="the service needs the serve extra")
    from fastapi.testclient import TestClient

    from wildvision.service import create_app

    with TestClient(create_app(classifier)) as client:
        statuses = set()
        for fmt, files in fuzzed.items():
            for data in files[:15]:
                response = client.post("/predict", content=data, headers={"Content-Type": "application/octet-stream"})
                assert response.status_code < 500, (fmt, response.text)
                statuses.add(response.status_code)
                if response.status_code == 200:
                    answer = response.json()
                    assert (answer["model_precision"], answer["model_digest"]) == (
                        "float32", classifier.identity.digest)
        assert 200 in statuses and 422 in statuses
        assert client.get("/health").json()["model_digest"] == classifier.identity.digest
