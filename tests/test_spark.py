"""Scoring on Apache Spark (local[2], and a standalone cluster of separate processes, for real): the same records as
`scan`, bad photos as error rows, the same Parquet columns as `wildvision scan`, known-item matches, one model load
per executor process, runs that continue after the driver or a worker is killed, and clear messages for bad input."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from importlib.metadata import version
from contextlib import ExitStack, contextmanager, suppress
from pathlib import Path
from typing import Iterator, NamedTuple

import pytest
from PIL import Image

from captions import caption, skip_without_font
from conftest import REPO, make_photo
from wildvision import Classifier, OperatingPoint
from wildvision.cli import main
from wildvision.hashing import pdq_available
from wildvision.known_items import KnownItemIndex
from wildvision.scan import ScanInput, find_images, layout_of, scan

pytest.importorskip("pyspark", reason="the Spark tests need the spark extra (part of [test])")
if shutil.which("java") is None and "JAVA_HOME" not in os.environ:
    pytest.skip("Spark needs Java 17+ (`java` on the PATH or JAVA_HOME): apt-get install openjdk-17-jre-headless "
                "(.ci/run installs it)", allow_module_level=True)
import pyarrow.parquet as pq  # noqa: E402
import pyspark  # noqa: E402
from pyspark.sql import DataFrame, SparkSession  # noqa: E402

from wildvision.spark import Reading, read_photos, score_photos  # noqa: E402

NOT_LISTED_BY_SPARK = {"empty.jpg", "shop/empty copy+1.jpg", "shop/broken-link.jpg"}  # Spark's file sources skip 0-byte files and dead links
SPARK_BIN = Path(pyspark.__file__).parent / "bin"  # the launch scripts the pyspark package ships


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
    return scanned(archive, classifier)


@pytest.fixture(scope="module")
def large_archive(archive, tmp_path_factory) -> Path:
    """The archive and 100 more photos: enough tasks that a run can be killed when some of them have finished."""
    root = tmp_path_factory.mktemp("spark-large") / "archive"
    shutil.copytree(archive, root, symlinks=True)
    (root / "many").mkdir()
    for index in range(100):
        make_photo(("ivory", "not_ivory", "horn")[index % 3], 1000 + index, size=(480, 360)).save(root / "many" / f"{index:03d}.jpg")
    return root


@pytest.fixture(scope="module")
def known_items(large_archive, classifier, tmp_path_factory) -> Path:
    """A known-item index of three of the large archive's photos."""
    path = tmp_path_factory.mktemp("index") / "known-items.sqlite"
    photos = [large_archive / "many" / f"{index:03d}.jpg" for index in (0, 1, 2)]
    KnownItemIndex(path, classifier, create=True).add(photos, ["case-0", "case-1", "case-2"])
    return path


@pytest.fixture(scope="module")
def expected_large(large_archive, classifier) -> dict[str, dict]:
    return scanned(large_archive, classifier)


@pytest.fixture(scope="module")
def expected_matches(large_archive, classifier, known_items) -> dict[str, dict]:
    """What `scan --match-index` records for the large archive: three photos match their known items."""
    return scanned(large_archive, classifier, KnownItemIndex(known_items, classifier))


def scanned(root: Path, classifier: Classifier, index: KnownItemIndex | None = None) -> dict[str, dict]:
    """`scan`'s records of the photos under `root`, as flat rows (the Parquet columns) by relative path."""
    layout = layout_of(classifier, index)
    return {record.path: layout.flatten(layout.to_dict(record))
            for record in scan(find_images(root), classifier, index=index)}


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
            if isinstance(value, float):  # scores and cosines: batches of other photos may move the last digits
                assert got[name] == pytest.approx(value, abs=1e-5), f"{path}: {name}"
            else:
                assert got[name] == value, f"{path}: {name}"


def listed_by_spark(expected: dict[str, dict]) -> dict[str, dict]:
    return {path: row for path, row in expected.items() if path not in NOT_LISTED_BY_SPARK}


class Cluster(NamedTuple):
    url: str  # spark://127.0.0.1:PORT
    workers: list[subprocess.Popen]


@pytest.fixture
def standalone_cluster(tmp_path) -> Iterator[Cluster]:
    """A Spark standalone master and two workers (one core and 1 GiB each) on loopback, each a process of its own,
    started from the `spark-class` script pyspark ships; stopped with their executors even when the test fails."""
    port, web_port = free_port(), free_port()
    url = f"spark://127.0.0.1:{port}"
    with ExitStack() as stack:
        stack.enter_context(started([str(SPARK_BIN / "spark-class"), "org.apache.spark.deploy.master.Master",
                                     "--host", "127.0.0.1", "--port", str(port), "--webui-port", str(web_port)],
                                    tmp_path / "master.log"))
        workers = [stack.enter_context(started([
            str(SPARK_BIN / "spark-class"), "org.apache.spark.deploy.worker.Worker", url, "--host", "127.0.0.1",
            "--cores", "1", "--memory", "1g", "--webui-port", str(free_port()), "--work-dir", str(tmp_path / f"work-{n}"),
        ], tmp_path / f"worker-{n}.log")) for n in range(2)]
        wait_until(lambda: alive_workers(web_port) == 2, *workers)
        yield Cluster(url, workers)


@pytest.fixture(scope="module")
def packed_environment(tmp_path_factory) -> Path:
    """The README's packed environment: a fresh virtual environment with this checkout installed as a package (not
    the test's own environment) and what executors import beside it, packed by venv-pack (about two minutes)."""
    venv_pack = pytest.importorskip("venv_pack", reason="packing an environment needs venv-pack (the test extra)")
    root = tmp_path_factory.mktemp("packed")
    environment = root / "wv"
    subprocess.run([sys.executable, "-m", "venv", str(environment)], check=True)
    # The same versions as this process has: pip takes them from its cache, and the records can be compared exactly.
    pins = [f"{name}=={version(name)}" for name in ("numpy", "pillow", "onnxruntime", "pandas", "pyarrow")]
    if pdq_available():  # the driver's matches carry PDQ distances; executors without pdqhash would answer None
        pins.append(f"pdqhash=={version('pdqhash')}")
    subprocess.run([str(environment / "bin" / "pip"), "install", "--quiet", str(REPO), *pins], check=True)
    return Path(venv_pack.pack(prefix=str(environment), output=str(root / "wildvision-env.tar.gz"), compress_level=1))


@contextmanager
def started(command: list[str], log: Path, **settings: str) -> Iterator[subprocess.Popen]:
    """A process in a process group of its own (with the JVMs and Python workers it starts), killed on exit;
    `settings` are extra environment variables."""
    environment = {
        **os.environ, "SPARK_LOCAL_IP": "127.0.0.1", "SPARK_DAEMON_MEMORY": "256m",  # master and worker JVMs
        **settings,
    }
    environment.pop("PYTHONPATH", None)  # executors import only what their own Python has
    with log.open("w") as sink:
        process = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT, env=environment, start_new_session=True)
    try:
        yield process
    finally:
        stop(process)


def stop(process: subprocess.Popen) -> None:
    """Kill -9 a process started by `started` and everything it started."""
    with suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def wait_until(condition, *processes: subprocess.Popen, timeout: float = 180.0) -> None:
    """Poll `condition` until it holds; fail when one of `processes` ends first, or after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert all(process.poll() is None for process in processes), f"{processes} ended early (see its log)"
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def alive_workers(web_port: int) -> int:
    """How many workers the master counts alive, from its web UI's JSON."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{web_port}/json/", timeout=2) as answer:
            return json.load(answer)["aliveworkers"]
    except OSError:  # not listening yet
        return 0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


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
    """Every file `scan` records gets the same record, including those Spark never hands over: 0-byte files and
    dead symbolic links."""
    output = tmp_path / "spark.parquet"
    assert main(["spark", str(archive), "-o", str(output), "--partitions", "3", "--batch-size", "4"]) == 1  # 6 photos failed
    assert ("scored 11, failed 6 (corrupt 1, empty 2, not_an_image 1, too_large 1, unreadable 1), already done 0"
            in capsys.readouterr().err)
    assert len(list(output.glob("part-*.parquet"))) == 3 + 1, "one file per task, and one of the files Spark skipped"
    assert spark.conf.get("spark.sql.files.maxPartitionNum", None) is None, "the session's settings are restored"
    assert_same_records(rows_by_path(spark.read.parquet(str(output)), archive), expected)
    assert main(["scan", str(archive), "-o", str(tmp_path / "scan.parquet")]) == 1
    scan_columns = [(field.name, field.type) for field in pq.read_schema(tmp_path / "scan.parquet")]
    assert [(field.name, field.type) for field in pq.read_table(output).schema] == scan_columns


def test_executors_decide_and_read_as_the_drivers_classifier(spark, archive, shipped_model):
    """`--operating-points`, `--max-pixels` and `--max-frames` reach the executors: records state the thresholds
    that decided them, and the pixel limit refuses what it refuses in `scan`."""
    driver = Classifier(shipped_model, operating_points={"ivory": OperatingPoint(0.0, 0.0)}, max_pixels=20_000)
    paths = [(str(item.file),) for item in find_images(archive)]
    rows = score_photos(spark.createDataFrame(paths, "path string"), reading=Reading.of(driver)).collect()
    inputs = [ScanInput(item.file, str(item.file)) for item in find_images(archive)]  # named as the rows are
    expected = {record.path: record for record in scan(inputs, driver)}
    for row in rows:
        record = expected[row["path"]]
        assert (row["decision"], row["thresholds"], row["error_category"]) == (
            record.decision, record.thresholds, record.error_category)
    assert {row["decision"] for row in rows} == {"block", None}
    assert any(row["error_category"] == "too_large" for row in rows)


def test_read_text_reaches_the_executors_with_scan_s_text_columns(spark, shipped_model, tmp_path, capsys):
    """`spark --read-text` reads the words on photos as `scan --read-text` does, into the same columns."""
    pytest.importorskip("rapidocr_onnxruntime", reason="reading text needs the text extra")
    skip_without_font("en")
    folder = tmp_path / "photos"
    folder.mkdir()
    make_photo("not_ivory", 1, size=(480, 360)).save(folder / "plain.jpg")
    caption(make_photo("not_ivory", 2, size=(480, 360)), "Mammoth Ivory Netsuke", "en")[0].save(folder / "promo.jpg")
    output, scanned_output = tmp_path / "spark.parquet", tmp_path / "scan.parquet"
    model = ["--model", str(shipped_model), "--read-text"]
    assert main([*model, "spark", str(folder), "-o", str(output)]) == 0
    assert main([*model, "scan", str(folder), "-o", str(scanned_output)]) == 0
    rows = {Path(row["path"]).name: row for row in pq.read_table(output).to_pylist()}
    assert rows["promo.jpg"]["text_labels"] == "ivory" and rows["promo.jpg"]["decision"] in ("review", "block")
    assert rows["plain.jpg"]["text_labels"] == ""
    assert pq.read_table(output).schema.names == pq.read_schema(scanned_output).names
    capsys.readouterr()
    assert main(["--model", str(shipped_model), "spark", str(folder), "-o", str(output)]) == 2
    assert "--read-text" in capsys.readouterr().err  # a run without reading text never continues one with it


def test_each_executor_process_loads_the_model_once(spark, archive):
    paths = [(str(item.file),) for item in find_images(archive)]
    photos = spark.createDataFrame(paths, "path string").repartition(6)  # 6 tasks on 2 task slots
    assert score_photos(photos).count() == len(paths)

    def report(frames):
        import pandas as pd

        from wildvision.spark import _classifier

        info = _classifier.cache_info()
        for _ in frames:
            yield pd.DataFrame({"pid": [os.getpid()], "loads": [info.misses], "models": [info.currsize],
                                "uses": [info.hits + info.misses]})

    schema = "pid long, loads long, models long, uses long"
    processes = spark.range(0, 8, numPartitions=8).mapInPandas(report, schema).collect()
    scoring = {row.pid: row for row in processes if row.uses}
    # One load per model file and reading (other tests in this module use other thresholds), never two of one.
    assert scoring and all(row.loads == row.models for row in scoring.values())
    assert max(row.uses for row in scoring.values()) > 1, "a worker process scored several tasks with one load"


def test_match_index_records_equal_scan_s(spark, archive, large_archive, known_items, expected_matches, tmp_path):
    """The index travels to the executors like the model; records get `scan --match-index`'s match columns."""
    assert {row["match_reference"] for row in expected_matches.values()} == {None, "case-0", "case-1", "case-2"}
    output = tmp_path / "spark.parquet"
    command = ["spark", str(large_archive), "-o", str(output), "--match-index", str(known_items), "--partitions", "4"]
    assert main(command) == 1  # the archive's bad photos
    assert_same_records(rows_by_path(spark.read.parquet(str(output)), large_archive), expected_matches)
    assert main(["scan", str(archive), "-o", str(tmp_path / "scan.parquet"), "--match-index", str(known_items)]) == 1
    scan_columns = [(field.name, field.type) for field in pq.read_schema(tmp_path / "scan.parquet")]
    assert [(field.name, field.type) for field in pq.read_table(output).schema] == scan_columns


def test_a_rerun_scores_only_new_photos_and_refuses_another_model(spark, archive, known_items, classifier, tmp_path,
                                                                  capsys):
    source, output = tmp_path / "photos", str(tmp_path / "spark.parquet")
    shutil.copytree(archive, source, symlinks=True)
    assert main(["spark", str(source), "-o", output]) == 1  # the archive's bad photos
    make_photo("ivory", 7).save(source / "shop" / "new.jpg")
    capsys.readouterr()
    assert main(["spark", str(source), "-o", output]) == 0
    assert "scored 1, failed 0, already done 17;" in capsys.readouterr().err
    assert spark.read.parquet(output).groupBy("path").count().where("count > 1").count() == 0
    assert spark.read.parquet(output).count() == 18

    for global_options, options, now in [(["--precision", "int8"], [], "int8"),
                                         ([], ["--match-index", str(known_items)], "with --match-index")]:
        assert main([*global_options, "spark", str(source), "-o", output, *options]) == 2
        earlier, this_run = capsys.readouterr().err.split("but this run scores with")
        assert f"holds records of {classifier.identity} (labels ivory, not_ivory;" in earlier
        assert "without --match-index" in earlier and now in this_run
    assert spark.read.parquet(output).count() == 18, "a refused run writes nothing"


def test_a_killed_run_continues_where_it_stopped(spark, large_archive, expected_large, tmp_path, capsys):
    """The driver killed (kill -9) once some tasks have finished: rerunning the same command scores the rest, and
    every photo ends with exactly one record."""
    output = tmp_path / "spark.parquet"
    command = ["spark", str(large_archive), "-o", str(output), "--master", "local[2]", "--partitions", "20"]
    with started([sys.executable, "-c", "from wildvision.cli import run; run()", *command], tmp_path / "driver.log") as driver:
        wait_until(lambda: any(output.glob("part-*.parquet")), driver)
    done = spark.read.parquet(str(output)).count()
    assert 0 < done < len(expected_large), "killed in the middle of the run"
    capsys.readouterr()
    status = main(command)
    summary = capsys.readouterr().err
    assert f"already done {done};" in summary
    assert status == (0 if ", failed 0," in summary else 1), "1 when a photo of this run (not of the killed one) failed"
    records = spark.read.parquet(str(output))
    assert records.count() == len(expected_large), "one record per photo"
    assert_same_records(rows_by_path(records, large_archive), expected_large)


@pytest.mark.slow
def test_a_standalone_cluster_run_survives_a_lost_worker(spark, standalone_cluster, packed_environment, large_archive,
                                                        known_items, expected_matches, tmp_path):
    """The README's cluster recipe against a master and two workers, each a process of its own: executors run the
    packed environment Spark unpacks for them (`--archives`), the command ships the model and the index; one worker
    is killed mid-run, its tasks run again on the other, and the records equal `scan --match-index`'s, one per photo."""
    entry = tmp_path / "wildvision_spark.py"
    entry.write_text("from wildvision.cli import run; run()\n")
    output = tmp_path / "spark.parquet"
    submit = [
        str(SPARK_BIN / "spark-submit"), "--master", standalone_cluster.url,
        "--archives", f"{packed_environment}#env", "--conf", "spark.executor.cores=1", "--conf", "spark.executor.memory=512m", "--conf", "spark.ui.enabled=false",
        str(entry), "spark", str(large_archive), "-o", str(output), "--partitions", "20",
        "--match-index", str(known_items),
    ]
    log = tmp_path / "driver.log"
    with started(submit, log, PYSPARK_DRIVER_PYTHON=sys.executable, PYSPARK_PYTHON="./env/bin/python") as driver:
        wait_until(lambda: any(output.glob("part-*.parquet")), driver)
        stop(standalone_cluster.workers[0])
        assert driver.wait(timeout=300) == 1, log.read_text()[-3000:]  # 1: the archive's 6 bad photos
    assert "Lost executor" in log.read_text(), "the killed worker's executor was running"
    unpacked = list((tmp_path / "work-1").glob("app-*/*/env/bin/python"))
    assert unpacked, "the surviving worker's executor ran the packed environment Spark unpacked for it"
    records = spark.read.parquet(str(output))
    assert records.count() == len(expected_matches), "one record per photo"
    assert_same_records(rows_by_path(records, large_archive), expected_matches)


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


def test_listings_are_decided_on_spark_as_scan_decides_them(spark, shipped_model, tmp_path, capsys):
    """`spark --listings`: a listing table's photos and words give the listing records `scan --listings` gives."""
    folder = tmp_path / "photos"
    folder.mkdir()
    for name, seed in (("a.jpg", 1), ("b.jpg", 2), ("c.jpg", 3)):
        make_photo("not_ivory", seed, size=(320, 240)).save(folder / name, quality=90)
    rows = [("a.jpg", "L1", "Ivory bangle for sale", ""), ("b.jpg", "L1", "", "Genuine elephant ivory, shipping"),
            ("c.jpg", "L2", "Blue ceramic bowl", ""), ("", "L3", "Carved mammoth ivory netsuke $900", "")]

    def table(uri: bool) -> Path:
        path = tmp_path / f"listings-{uri}.csv"
        lines = [f"{f'file:{folder / name}' if uri and name else name},{listing},{title},{description}"
                 for name, listing, title, description in rows]
        path.write_text("\n".join(["path,listing,title,description", *lines]) + "\n", encoding="utf-8")
        return path

    assert main(["--model", str(shipped_model), "scan", str(folder), "-o", str(tmp_path / "scan.jsonl"),
                 "--listings", str(table(uri=False))]) == 0
    output = tmp_path / "spark.parquet"
    assert main(["--model", str(shipped_model), "spark", str(folder), "-o", str(output),
                 "--listings", str(table(uri=True))]) == 0
    assert "spark.listings.parquet: 3 listings" in capsys.readouterr().err
    by_spark = {row["listing"]: row.asDict() for row in spark.read.parquet(str(tmp_path / "spark.listings.parquet"))
                .collect()}
    by_scan = {row["listing"]: row for row in map(json.loads, (tmp_path / "scan.listings.jsonl").open())}
    assert set(by_spark) == set(by_scan) == {"L1", "L2", "L3"}
    for listing, expected in by_scan.items():
        got = by_spark[listing]
        assert (got["decision"], list(got["labels"]), dict(got["scores"]), got["photos"]) == (
            expected["decision"], expected["labels"], expected["scores"], expected["photos"])
        assert [(r["source"], r["signal"], r["phrase"]) for r in got["reasons"]] == [
            (r["source"], r["signal"], r["phrase"]) for r in expected["reasons"]]
    assert main(["--model", str(shipped_model), "spark", str(folder), "-o", str(output),
                 "--listings", str(tmp_path / "absent.csv")]) == 2
    assert "no listing table there" in capsys.readouterr().err
