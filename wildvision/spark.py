"""Score photo archives on Apache Spark: `scan`'s records, computed on executors, written as Parquet.

`score_photos` turns a DataFrame of photos (Spark's `binaryFile` rows, or just paths) into a DataFrame of records
with the columns of `wildvision scan -o records.parquet`. Each executor task runs `scan` itself on its photos through
`mapInPandas`: decoding in threads a few batches ahead of inference, batches of `batch_size`, and an error record,
never a failed task, for a photo that cannot be scored. The model file, and a known-item index when matching, travel
to each executor once (`SparkContext.addFile`), and each executor Python process loads them once: Spark reuses its
Python workers across tasks, and `_classifier` and `_index` keep what they loaded for the life of the process.

`score_archive` writes an archive's records into a Parquet folder and continues an earlier run into the same folder:
photos that already have a record are left out, and the new records are appended as new part files.

Needs `pip install "wildvision[spark]"`; `import wildvision` never imports pyspark.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import sys
import time
from collections import Counter
from contextlib import closing, contextmanager
from dataclasses import asdict, dataclass, replace
from itertools import islice
from pathlib import Path
from typing import Iterator, Mapping
from urllib.parse import urlsplit

try:
    import pandas as pd
    from py4j.protocol import Py4JJavaError
    from pyspark import SparkFiles, TaskContext
    from pyspark.errors import AnalysisException
    from pyspark.sql import DataFrame, SparkSession
    from pyspark.sql import functions as F
    from pyspark.sql.types import (
        ArrayType, DoubleType, LongType, MapType, StringType, StructField, StructType,
    )
except ImportError as error:
    raise ImportError(f"Spark scoring needs the spark extra ({error.name} is missing): "
                      "pip install 'wildvision[spark]'") from None

from wildvision.classifier import Classifier, ModelIdentity, default_model_path
from wildvision.images import IMAGE_SUFFIXES, ImageLoadError
from wildvision.known_items import KnownItemIndex
from wildvision.listings import ListingError, listing_record
from wildvision.model_info import OperatingPoint
from wildvision.records import RecordLayout, ScanRecord
from wildvision.scan import (
    ScanInput, ScanSummary, check_same_run, find_images, layout_of, run_facts, scan,
)
from wildvision.settings import ClassifierSettings
from wildvision.text import Lexicon
from wildvision.words import WORD_SOURCES

__all__ = ["LISTING_SCHEMA", "Reading", "listings_output", "read_listings", "read_photos", "record_schema",
           "score_archive", "score_listings", "score_photos", "session"]

_SPARK_TYPES = {str: StringType(), float: DoubleType(), int: LongType()}
# `wildvision.listings.ListingRecord` as Spark columns; `reasons` are `wildvision.decision.Reason`s.
_STRINGS = ArrayType(StringType())
LISTING_SCHEMA = StructType([
    StructField("listing", StringType()), StructField("decision", StringType()),
    StructField("deciding_path", StringType()), StructField("labels", _STRINGS),
    StructField("scores", MapType(StringType(), DoubleType())),
    StructField("reasons", ArrayType(StructType([
        StructField("source", StringType()), StructField("label", StringType()), StructField("signal", StringType()),
        StructField("phrase", StringType()), StructField("score", DoubleType())]))),
    StructField("paths", _STRINGS), StructField("photos", LongType()), StructField("failed", LongType()),
    StructField("model_name", StringType()), StructField("model_version", StringType()),
])
# Hadoop glob patterns are case-sensitive: `*.{[jJ][pP][gG],...}` matches scan's suffixes in any case, as scan does.
_IMAGE_GLOB = "*.{" + ",".join(
    "".join(f"[{c.lower()}{c.upper()}]" for c in suffix[1:]) for suffix in sorted(IMAGE_SUFFIXES)
) + "}"
# What an output was written with, noted in a file next to the part files: Spark's readers skip names starting
# with "_", so the records stay one Parquet dataset.
_RUN_FILE = "_wildvision.json"
# Hadoop's committer algorithm 2 moves each task's file into the output as the task finishes (1 moves them all at the
# end of the job): a job that dies keeps every finished task's records, which the next run skips. A retried task
# writes the same file name, replacing its failed attempt's file, so a photo never gets two records.
_KEEP_FINISHED_TASKS = {"mapreduce.fileoutputcommitter.algorithm.version": "2"}
_SHIPPED: set[tuple[str, str]] = set()  # (Spark application, file) pairs already sent to the executors


def session(master: str | None = None) -> SparkSession:
    """The active Spark session, or a new one on `master` (`local[4]`, ...; default: spark-submit's, else `local[*]`)."""
    if shutil.which("java") is None and "JAVA_HOME" not in os.environ:
        raise FileNotFoundError("Spark needs Java 17 or newer: install it (e.g. apt-get install "
                                "openjdk-17-jre-headless) or set JAVA_HOME")
    # Spark starts Python workers with $PYSPARK_PYTHON, by default whatever `python3` is on the PATH, which may lack
    # wildvision. When this process starts a local Spark itself (spark-submit would have set PYSPARK_GATEWAY_PORT),
    # the workers must run this very interpreter.
    if "PYSPARK_GATEWAY_PORT" not in os.environ and (master or "local").startswith("local"):
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    builder = SparkSession.builder.appName("wildvision")
    return (builder.master(master) if master else builder).getOrCreate()


def read_photos(spark: SparkSession, source: str) -> DataFrame:
    """Spark's `binaryFile` rows (path, modificationTime, length, content) of the image files under `source`.

    `source` is a folder, searched recursively, or a glob, in any file system Spark reads (`file://`, `hdfs://`,
    `s3a://`, ...). A file that vanishes or cannot be read between listing and reading is skipped (the executor logs
    it) instead of failing the job; Spark also skips 0-byte files, and Hadoop's local file system never lists dead
    symbolic links (`score_archive` gives all of them their error records afterwards). Names starting with `_` or
    `.` are listed, as scan lists them, where Spark has the `ignoredPathSegmentRegex` option (4.3 has it); older
    versions skip them.
    """
    reader = (
        spark.read.format("binaryFile")
        .option("pathGlobFilter", _IMAGE_GLOB)
        .option("recursiveFileLookup", "true")
        .option("ignoredPathSegmentRegex", "")
        .option("ignoreMissingFiles", "true")
        .option("ignoreCorruptFiles", "true")  # for binaryFile: any I/O error reading a file
    )
    try:
        photos = reader.load(source)
    except AnalysisException as error:
        if error.getCondition() == "PATH_NOT_FOUND":
            raise FileNotFoundError(f"no such file or folder: {source}") from None
        raise
    if not photos.select("path").head(1):  # reads one file's status at most, never the photos
        raise FileNotFoundError(f"no image files ({', '.join(sorted(IMAGE_SUFFIXES))}) under {source}")
    return photos


def record_schema(layout: RecordLayout) -> StructType:
    """The records' columns: those `wildvision scan` writes to Parquet (`RecordLayout.columns`), with
    `scan --match-index`'s `match_*` and `scan --read-text`'s `text_*` columns where the layout has them."""
    return StructType([StructField(name, _SPARK_TYPES[kind]) for name, kind in layout.columns])


# How executors decide and read photos, as a driver's `Classifier` does: the one settings type the command line and
# the service load their classifier with too. `Reading` is its earlier name here, kept for code that imports it.
Reading = ClassifierSettings


@dataclass(frozen=True)
class _Job:
    model_file: str  # names under which the model and the index were shipped (`SparkFiles.get`)
    index_file: str | None
    reading: ClassifierSettings
    batch_size: int


def score_photos(
    photos: DataFrame, *, model: str | os.PathLike[str] | None = None,
    match_index: str | os.PathLike[str] | None = None, batch_size: int = 16, reading: ClassifierSettings = ClassifierSettings(),
) -> DataFrame:
    """One record per row of `photos`, with the columns of `record_schema`.

    `photos` has a `path` column, which the records keep, and optionally `content`, the file's bytes (as
    `read_photos` and Spark's `binaryFile` source give them). Without `content`, executors read each path
    themselves, so paths must be local paths or `file:` URIs readable on every executor (a shared mount); rows
    whose path is null are dropped, since no record could be joined back to them.
    `model` is a path or URI the driver can read (default: the shipped model). `match_index`, a known-item index
    file (`wildvision.known_items`) built with that model, adds the `match_*` columns. Both are shipped to each
    executor once. Each task decodes in `spark.task.cpus` threads and scores as many batches side by side, one
    onnxruntime thread each (what `scan` found fastest for this small model). `reading`: thresholds and limits.
    """
    model_file, index_file = _ship_model_and_index(photos.sparkSession, model, match_index)
    return _score(photos, _Job(model_file, index_file, reading, batch_size))


def score_archive(
    spark: SparkSession, source: str, output: str, *, model: str | os.PathLike[str] | None = None,
    match_index: str | os.PathLike[str] | None = None, batch_size: int = 16, partitions: int | None = None,
    reading: ClassifierSettings = ClassifierSettings(),
) -> ScanSummary:
    """Score the image files under `source` into the Parquet folder `output`; the summary counts this run's records.

    A new `output` is created. An `output` of an earlier run with the same model file, thresholds, labels and
    matching (killed, failed, or finished before more photos arrived) is continued: photos it already has a record
    for are left out, and the new records are appended as new part files. An `output` of another kind of run is
    refused.
    `partitions`: about how many tasks read and score the archive, each writing one Parquet file (default: Spark's
    file split, roughly 30 photos of 300 KB per task, since it counts 4 MB per file opened). `reading`: the
    thresholds and limits executors use (`ClassifierSettings.of(classifier)` takes a driver classifier's).
    """
    started = time.monotonic()
    photos = read_photos(spark, source)
    model_file, index_file = _ship_model_and_index(spark, model, match_index)
    job = _Job(model_file, index_file, reading, batch_size)
    classifier = _classifier(SparkFiles.get(model_file), reading)
    layout = RecordLayout(classifier.info.labels, match=index_file is not None, text=reading.read_text)
    earlier = _earlier_records(spark, output, classifier, layout)
    before = _counts(earlier)
    # Broadcast, so the photos are filtered where Spark reads them and their bytes never cross the network.
    todo = photos.join(F.broadcast(earlier.select("path")), "path", "left_anti")
    split = {} if partitions is None else {
        "spark.sql.files.minPartitionNum": str(partitions), "spark.sql.files.maxPartitionNum": str(partitions),
    }
    with _conf(spark, split):  # read when the write is planned
        records = _score(todo, job)
        records.write.mode("append").options(**_KEEP_FINISHED_TASKS).parquet(output)
    _append_unread_files(photos, source, output, classifier, layout)
    summary = _summary(_counts(_records(spark, output, layout)) - before)
    summary.already_done = sum(before.values())
    summary.seconds = time.monotonic() - started
    return summary


def score_listings(
    records: DataFrame, listings: DataFrame, *, operating_points: Mapping[str, OperatingPoint], lexicon: Lexicon,
) -> DataFrame:
    """One listing record per listing (`wildvision.listings.ListingRecord`, in `LISTING_SCHEMA`), decided as `scan
    --listings` decides, from the records of a run and a listing table: `path` (as the records name it) and `listing`
    columns, with optional `title` and `description` (a row without a path gives a listing's words alone; where a
    listing's rows differ, the first non-empty title or description counts). Each listing is decided on one executor
    with `operating_points` and `lexicon` (it travels as data), so a listing table of any size never enters the
    driver."""
    _check_listing_columns(listings, "the listing table")
    words = [F.col(source) if source in listings.columns else F.lit(None).cast("string").alias(source)
             for source in WORD_SOURCES]
    table = listings.select(F.col("path").cast("string"), F.col("listing").cast("string"), *words)
    layout = RecordLayout.of_columns(records.columns)
    points = tuple(operating_points.items())

    def decide(frame: pd.DataFrame) -> pd.DataFrame:  # a function, not a partial: Spark reads its type hints
        return _decide_listing(frame, layout=layout, points=points, lexicon=lexicon)

    return (table.where(F.col("listing").isNotNull()).join(records, "path", "left")
            .groupBy("listing").applyInPandas(decide, LISTING_SCHEMA))


def read_listings(spark: SparkSession, source: str) -> DataFrame:
    """A listing table for `score_listings`: Parquet, or CSV with a header row, on any file system Spark reads; its
    columns are checked now, before any photo is scored."""
    reader = spark.read.parquet if source.rstrip("/").endswith(".parquet") else spark.read.option("header", True).csv
    try:
        table = reader(source)
    except AnalysisException as error:
        raise FileNotFoundError(f"{source}: no listing table there ({error.getCondition()})") from None
    _check_listing_columns(table, source)
    return table


def _check_listing_columns(table: DataFrame, source: str) -> None:
    missing = {"path", "listing"} - set(table.columns)
    if missing:
        raise ListingError(f"{source}: a listing table needs 'path' and 'listing' columns, it has "
                           f"{', '.join(table.columns) or 'none'}")


def listings_output(output: str) -> str:
    """Where `wildvision spark --listings` writes the listing records of `output`: `records.parquet` ->
    `records.listings.parquet`, beside it."""
    stem = output.rstrip("/")
    return f"{stem.removesuffix('.parquet')}.listings.parquet"


def _decide_listing(
    frame: pd.DataFrame, *, layout: RecordLayout, points: tuple[tuple[str, OperatingPoint], ...], lexicon: Lexicon,
) -> pd.DataFrame:
    """One listing's rows (its table rows joined to their records) as its listing record."""
    rows = [{name: (None if _is_null(value) else value) for name, value in row.items()}
            for row in frame.to_dict("records")]
    words = {source: next((row[source] for row in rows if row[source]), None) for source in WORD_SOURCES}
    records = [layout.nested({name: row[name] for name in layout.column_names})
               for row in rows if row["path"] is not None and row.get("model_name") is not None]
    decided = listing_record(rows[0]["listing"], records, words, dict(points), lexicon)
    return pd.DataFrame([asdict(decided)])


def _is_null(value: object) -> bool:
    return value is None or (isinstance(value, float) and value != value)  # pandas turns a null number into NaN


def _score(photos: DataFrame, job: _Job) -> DataFrame:
    """`score_photos` with the model (and index) already shipped."""
    labels = _classifier(SparkFiles.get(job.model_file), job.reading).info.labels  # bad thresholds fail here, once
    if job.index_file is not None:
        _index(job)  # another model's index fails here, once
    columns = ["path", "content"] if "content" in photos.columns else ["path"]
    score = functools.partial(_score_partition, job=job)
    schema = record_schema(RecordLayout(labels, match=job.index_file is not None, text=job.reading.read_text))
    return photos.where(F.col("path").isNotNull()).select(*columns).mapInPandas(score, schema)


def _earlier_records(spark: SparkSession, output: str, classifier: Classifier, layout: RecordLayout) -> DataFrame:
    """The records earlier runs wrote to `output` (none for a new folder), refusing a folder of another kind of run.

    A run notes what it scores with (`run_facts`: model file, thresholds, labels, matching, lexicon) in
    OUTPUT/_wildvision.json before it scores a photo, so even a run killed before its first task finished is
    continued, and records of two models never mix in one output.
    """
    facts = run_facts(classifier, layout)
    file_system, note = _hadoop_path(spark, f"{output.rstrip('/')}/{_RUN_FILE}")
    noted = _read_text(spark, file_system, note)
    if noted is None and _exists(spark, output):
        raise FileExistsError(f"{output} already exists and is no output of `wildvision spark` (it has no "
                              f"{_RUN_FILE}); remove it or write to another folder")
    if not noted:  # a new output, or a run killed while noting its facts (one small write: all of it, or none)
        with closing(file_system.create(note, True)) as sink:
            sink.write(bytearray(json.dumps(facts).encode()))
    else:
        check_same_run(json.loads(noted), facts, output)
    return _records(spark, output, layout)


def _records(spark: SparkSession, output: str, layout: RecordLayout) -> DataFrame:
    """The records in `output`; none where no task has finished yet (so the schema is given, not read from files)."""
    return spark.read.schema(record_schema(layout)).parquet(output)


def _append_unread_files(
    photos: DataFrame, source: str, output: str, classifier: Classifier, layout: RecordLayout
) -> None:
    """Give every image file Spark never handed over its error record, as `scan` does: 0-byte and unreadable files
    (listed, but not read) and dead symbolic links (never listed).

    They are found by comparing the listing with the written records (on the cluster: only the few misses reach the
    driver), and dead links by walking a local source's folders on the driver.
    """
    spark = photos.sparkSession
    links = {item.name: item for item in _dead_links(spark, source)}
    listing = _listed_files(photos).union(spark.createDataFrame([(name,) for name in links], "path string"))
    written = _records(spark, output, layout).select("path")
    missed = [row.path for row in listing.join(written, "path", "left_anti").collect()]
    records = [
        *scan([links[path] for path in missed if path in links], classifier),  # scan's own words for a dead link
        *(_unread_record(spark, path, classifier.identity) for path in missed if path not in links),
    ]
    if records:
        rows = [layout.flatten(layout.to_dict(record)) for record in records]
        spark.createDataFrame(rows, record_schema(layout)).coalesce(1).write.mode("append").parquet(output)


def _listed_files(photos: DataFrame) -> DataFrame:
    """Every file in `photos`' listing as a `path` column, built on the JVM (an archive's listing never enters Python)."""
    spark, jvm = photos.sparkSession, photos.sparkSession._jvm
    # unsafeWrapArray takes the String[] without a copy (py4j cannot pass it to Java's varargs methods).
    uris = jvm.scala.collection.immutable.ArraySeq.unsafeWrapArray(photos._jdf.inputFiles())
    listing = DataFrame(spark._jsparkSession.createDataset(uris, jvm.org.apache.spark.sql.Encoders.STRING()).toDF(), spark)
    # The listing holds URIs (file:///a/b%20c.jpg), the rows Hadoop paths (file:/a/b c.jpg). A URI may hold a raw "+",
    # which url_decode would turn into a space.
    decoded = F.url_decode(F.replace(F.col("value"), F.lit("+"), F.lit("%2B")))
    return listing.select(F.regexp_replace(decoded, r"^([A-Za-z][A-Za-z0-9+.-]*):///", "$1:/").alias("path"))


def _dead_links(spark: SparkSession, source: str) -> list[ScanInput]:
    """Dead symbolic links with an image suffix under a local `source`, named as Spark names the files it lists.

    Hadoop's local file system leaves a name it cannot follow out of a folder's listing, so Spark never sees them;
    the driver walks the folders the source names. HDFS and object stores have no symbolic links.
    """
    file_system, pattern = _hadoop_path(spark, source)
    if file_system.getScheme() != "file":
        return []
    links = []
    for status in file_system.globStatus(pattern) or []:
        root = Path(status.getPath().toUri().getPath())
        for item in find_images(root) if root.is_dir() else ():
            if item.file.is_symlink() and not item.file.exists():
                links.append(ScanInput(item.file, f"{status.getPath()}/{item.name}"))
    return links


def _unread_record(spark: SparkSession, path: str, model: ModelIdentity) -> ScanRecord:
    """The error record of a listed file Spark did not read: empty, vanished, or unreadable."""
    file_system, hadoop_path = _hadoop_path(spark, path)
    try:
        size = file_system.getFileStatus(hadoop_path).getLen()
        reason, category = ("empty file (0 bytes)", "empty") if size == 0 else ("cannot read file", "unreadable")
    except Py4JJavaError:
        reason, category = "cannot read file (it vanished after it was listed)", "unreadable"
    return ScanRecord.failed(path, ImageLoadError(path, reason, category), model)


def _read_text(spark: SparkSession, file_system, path) -> str | None:
    """A small file's text, through Hadoop (any file system Spark writes to); None when it does not exist."""
    if not file_system.exists(path):
        return None
    with closing(file_system.open(path)) as source:
        return spark._jvm.org.apache.commons.io.IOUtils.toString(source, "UTF-8")


def _hadoop_path(spark: SparkSession, path: str):  # -> (org.apache.hadoop.fs.FileSystem, org.apache.hadoop.fs.Path)
    hadoop_path = spark._jvm.org.apache.hadoop.fs.Path(path)
    return hadoop_path.getFileSystem(spark._jsc.hadoopConfiguration()), hadoop_path


def _exists(spark: SparkSession, path: str) -> bool:
    file_system, hadoop_path = _hadoop_path(spark, path)
    return file_system.exists(hadoop_path)


@functools.cache
def _classifier(model_file: str, reading: ClassifierSettings) -> Classifier:
    """This process's Classifier of `model_file` (an executor's, or the driver's for labels): loaded once, then reused.
    One onnxruntime thread each: a task scores `spark.task.cpus` batches side by side (see `score_photos`)."""
    return replace(reading, threads=1).load(model_file)


@functools.cache
def _index(job: _Job) -> KnownItemIndex:
    """This process's known-item index, read into memory at its first match and kept for every later task."""
    assert job.index_file is not None
    return KnownItemIndex(SparkFiles.get(job.index_file), _classifier(SparkFiles.get(job.model_file), job.reading))


def _score_partition(chunks: Iterator[pd.DataFrame], *, job: _Job) -> Iterator[pd.DataFrame]:
    """mapInPandas: `scan` over all of a task's rows (streamed, never all in memory), records out a batch at a time."""
    cpus = TaskContext.get().cpus()
    batch_size = job.batch_size
    classifier = _classifier(SparkFiles.get(job.model_file), job.reading)
    index = None if job.index_file is None else _index(job)
    layout = layout_of(classifier, index)
    records = scan(_inputs(chunks), classifier, batch_size=batch_size, workers=cpus, scorers=cpus, index=index)
    while batch := list(islice(records, batch_size)):
        rows = [layout.flatten(layout.to_dict(record)) for record in batch]
        yield pd.DataFrame(rows, columns=layout.column_names)


def _inputs(chunks: Iterator[pd.DataFrame]) -> Iterator[ScanInput]:
    for chunk in chunks:
        sources = chunk["content"] if "content" in chunk else map(_local_path, chunk["path"])
        yield from map(ScanInput, sources, chunk["path"])


def _local_path(path: str) -> Path:
    """`file:/a/b c.jpg`, `file:///a/b c.jpg` or `/a/b c.jpg` as a local path (Spark's paths are not %-encoded)."""
    return Path(urlsplit(path).path) if path.startswith("file:") else Path(path)


def _ship_model_and_index(
    spark: SparkSession, model: str | os.PathLike[str] | None, match_index: str | os.PathLike[str] | None
) -> tuple[str, str | None]:
    """Send the model file (and the index) to every executor; the names `SparkFiles.get` finds them under."""
    model_source = os.fspath(model) if model is not None else str(default_model_path())
    return (_ship(spark, model_source, "model file"),
            None if match_index is None else _ship(spark, os.fspath(match_index), "known-item index"))


def _ship(spark: SparkSession, source: str, what: str) -> str:
    """Send a file to every executor (and the driver's SparkFiles folder) once; the name `SparkFiles.get` takes."""
    if "://" not in source and not Path(source).is_file():
        raise FileNotFoundError(f"{what} not found: {source}")
    shipment = (spark.sparkContext.applicationId, source)
    if shipment not in _SHIPPED:  # Spark warns on every later addFile of the same file
        spark.sparkContext.addFile(source)
        _SHIPPED.add(shipment)
    return os.path.basename(urlsplit(source).path)


@contextmanager
def _conf(spark: SparkSession, settings: Mapping[str, str]) -> Iterator[None]:
    """Session settings for one action, restored afterwards: the session may be the caller's."""
    previous = {key: spark.conf.get(key, None) for key in settings}
    for key, value in settings.items():
        spark.conf.set(key, value)
    try:
        yield
    finally:
        for key, value in previous.items():
            if value is None:
                spark.conf.unset(key)
            else:
                spark.conf.set(key, value)


def _counts(records: DataFrame) -> Counter:
    """How many records have each (decision, error category)."""
    rows = records.groupBy("decision", "error_category").count().collect()
    return Counter({(decision, category): count for decision, category, count in rows})


def _summary(counts: Counter) -> ScanSummary:
    summary = ScanSummary()
    for (decision, category), count in counts.items():
        if category is None:
            summary.scored += count
            summary.decisions[decision] += count
        else:
            summary.failed += count
            summary.failures[category] += count
    return summary
