"""Scoring on Apache Spark (local[2], for real): the same records as `scan`, bad photos as error rows, the same
Parquet columns as `wildvision scan`, one model load per executor process, and clear messages for bad input."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest
from PIL import Image

from conftest import REPO, make_photo
from wildvision import Classifier
from wildvision.cli import main
from wildvision.records import flatten
from wildvision.scan import find_images, scan

pytest.importorskip("pyspark", reason="the Spark tests need the spark extra (part of [test])")
if shutil.which("java") is None and "JAVA_HOME" not in os.environ:
    pytest.skip("Spark needs Java (`java` on the PATH or JAVA_HOME); CI installs it", allow_module_level=True)
import pyarrow.parquet as pq  # noqa: E402
from pyspark.sql import DataFrame, SparkSession  # noqa: E402

from wildvision.spark import read_photos, score_photos  # noqa: E402

NOT_LISTED_BY_SPARK = {"empty.jpg", "shop/empty copy+1.jpg", "shop/broken-link.jpg"}  # Spark's file sources skip 0-byte files and dead links


@pytest.fixture(scope="module")
def spark() -> SparkSession:
    """One local Spark for the module; its Python workers run this interpreter and import this checkout."""
    with pytest.MonkeyPatch.context() as patch:  # read once, when Spark starts
        patch.setenv("PYSPARK_PYTHON", sys.executable)
        patch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
        session = (
            SparkSession.builder.master("local[2]").appName("wildvision-tests")
            .config("spark.ui.enabled", "false")
            .config("spark.sql.shuffle.partitions", "2")
            .getOrCreate()
        )
    yield session
    session.stop()


@pytest.fixture(scope="module")
def classifier(shipped_model) -> Classifier:
    return Classifier(shipped_model)


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> Path:
    """Good photos of several formats, sizes and names, and bad ones of every kind `scan` reports."""
    root = tmp_path_factory.mktemp("spark") / "archive"
    (root / "shop" / "2024").mkdir(parents=True)
    for index in range(9):
        name = ["shop/2024/item{}.jpg", "item{}.png", "shop/Item {}.JPEG"][index % 3].format(index)
        make_photo(("ivory", "not_ivory", "horn")[index % 3], index, size=(160 + 40 * index, 128)).save(root / name)
    make_photo("ivory", 50).save(root / "_hidden.jpg")
    make_photo("ivory", 99, size=(400, 300)).save(root / "whole.jpg")
    (root / "shop" / "truncated.jpg").write_bytes((root / "whole.jpg").read_bytes()[:700])
    (root / "fake.jpg").write_text("a text file called .jpg")
    (root / "empty.jpg").write_bytes(b"")
    (root / "shop" / "empty copy+1.jpg").write_bytes(b"")  # a URI escapes the space and keeps the "+"
    Image.new("L", (8200, 8000)).save(root / "bomb.png")  # 65.6 megapixels: over the 64-megapixel limit
    (root / "notes.txt").write_text("not an image suffix: never listed")
    os.symlink(root / "vanished.jpg", root / "shop" / "broken-link.jpg")
    return root


@pytest.fixture(scope="module")
def expected(archive, classifier) -> dict[str, dict]:
    """What `scan` records for the archive, as flat rows (the Parquet columns) by relative path."""
    return {record.path: flatten(record.to_dict(), classifier.info.labels)
            for record in scan(find_images(archive), classifier)}


def relative(path: str, root: Path) -> str:
    """A record's path as `scan` names it, relative to the archive (Spark's are `file:` URIs)."""
    return path.removeprefix("file:").removeprefix("//").removeprefix(f"{root}/")


def rows_by_path(records: DataFrame, root: Path) -> dict[str, dict]:
    rows = (row.asDict() for row in records.collect())
    return {relative(row["path"], root): {**row, "path": relative(row["path"], root)} for row in rows}


def assert_same_records(actual: dict[str, dict], expected: dict[str, dict]) -> None:
    assert sorted(actual) == sorted(expected)
    for path, want in expected.items():
        got = actual[path]
        assert list(got) == list(want), f"{path}: columns differ"
        for name, value in want.items():
            if name.startswith("score_") and value is not None:
                assert got[name] == pytest.approx(value, abs=1e-6), f"{path}: {name}"
            else:
                assert got[name] == value, f"{path}: {name}"


def listed_by_spark(expected: dict[str, dict]) -> dict[str, dict]:
    return {path: row for path, row in expected.items() if path not in NOT_LISTED_BY_SPARK}


def test_the_archive_has_every_kind_of_bad_photo(expected):
    categories = {row["error_category"] for row in expected.values()}
    assert categories == {None, "corrupt", "not_an_image", "empty", "too_large", "unreadable"}


def test_binary_file_rows_get_scan_s_records(spark, archive, expected):
    """Executors score the bytes Spark read: the same records as `scan`, bad photos included."""
    actual = rows_by_path(score_photos(read_photos(spark, str(archive)), batch_size=4), archive)
    assert set(expected) - set(actual) == NOT_LISTED_BY_SPARK
    assert_same_records(actual, listed_by_spark(expected))


def test_path_rows_get_scan_s_records_for_every_file(spark, archive, expected):
    """Executors read the paths themselves, so an empty or unreadable file gets its error record too."""
    schemes = ("", "file:", "file://")  # a local path, Spark's form of a file URI, and the standard form
    paths = [f"{schemes[index % 3]}{item.file}" for index, item in enumerate(find_images(archive))]
    photos = spark.createDataFrame([(path,) for path in [*paths, None]], "path string")
    assert_same_records(rows_by_path(score_photos(photos, batch_size=3), archive), expected)


def test_the_command_writes_scan_s_parquet_columns(spark, archive, expected, tmp_path, capsys):
    output = tmp_path / "spark.parquet"
    assert main(["spark", str(archive), "-o", str(output), "--partitions", "3", "--batch-size", "4"]) == 0
    assert "scored 11, failed 5 (corrupt 1, empty 2, not_an_image 1, too_large 1)" in capsys.readouterr().err
    assert len(list(output.glob("part-*.parquet"))) == 3 + 1, "one file per task, and one of the files Spark skipped"
    assert spark.conf.get("spark.sql.files.maxPartitionNum", None) is None, "the session's settings are restored"
    listed = {path: row for path, row in expected.items() if path != "shop/broken-link.jpg"}  # dead links: unlisted
    assert_same_records(rows_by_path(spark.read.parquet(str(output)), archive), listed)
    assert main(["scan", str(archive), "-o", str(tmp_path / "scan.parquet")]) == 0
    scan_columns = [(field.name, field.type) for field in pq.read_schema(tmp_path / "scan.parquet")]
    assert [(field.name, field.type) for field in pq.read_table(output).schema] == scan_columns


def test_each_executor_process_loads_the_model_once(spark, archive):
    paths = [(str(item.file),) for item in find_images(archive)]
    photos = spark.createDataFrame(paths, "path string").repartition(6)  # 6 tasks on 2 task slots
    assert score_photos(photos).count() == len(paths)

    def report(frames):
        import pandas as pd

        from wildvision.spark import _classifier

        info = _classifier.cache_info()
        for _ in frames:
            yield pd.DataFrame({"pid": [os.getpid()], "loads": [info.misses], "uses": [info.hits + info.misses]})

    processes = spark.range(0, 8, numPartitions=8).mapInPandas(report, "pid long, loads long, uses long").collect()
    scoring = {row.pid: row for row in processes if row.uses}
    assert scoring and all(row.loads == 1 for row in scoring.values())
    assert max(row.uses for row in scoring.values()) > 1, "a worker process scored several tasks with one load"


@pytest.mark.parametrize("source, output, message", [
    ("{tmp}/absent", "{tmp}/o.parquet", "no such file or folder"),
    ("{tmp}/no-photos", "{tmp}/o.parquet", "no image files"),
    ("{archive}", "{tmp}/exists", "already exists"),
])
def test_the_command_explains_bad_input(spark, archive, tmp_path, capsys, source, output, message):
    (tmp_path / "no-photos").mkdir()
    (tmp_path / "no-photos" / "notes.txt").write_text("no photos here")
    (tmp_path / "exists").mkdir()
    arguments = ["spark", source.format(tmp=tmp_path, archive=archive), "-o", output.format(tmp=tmp_path)]
    assert main(arguments) == 2
    assert message in capsys.readouterr().err


def test_a_missing_model_is_named_before_spark_runs(tmp_path, capsys):
    assert main(["--model", str(tmp_path / "absent.onnx"), "spark", str(tmp_path), "-o", str(tmp_path / "o")]) == 2
    assert "model file not found" in capsys.readouterr().err


def test_without_pyspark_the_command_says_what_to_install(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "pyspark", None)  # an import of pyspark now fails as if it were not installed
    monkeypatch.delitem(sys.modules, "wildvision.spark")
    assert main(["spark", str(tmp_path), "-o", str(tmp_path / "o")]) == 2
    assert "pip install 'wildvision[spark]'" in capsys.readouterr().err
