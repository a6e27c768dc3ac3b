"""Score photo archives on Apache Spark: `scan`'s records, computed on executors, written as Parquet.

`score_photos` turns a DataFrame of photos (Spark's `binaryFile` rows, or just paths) into a DataFrame of records
with the columns of `wildvision scan -o records.parquet`. Each executor task runs `scan` itself on its photos through
`mapInPandas`: decoding in threads a few batches ahead of inference, batches of `batch_size`, and an error record,
never a failed task, for a photo that cannot be scored. The model file travels to each executor once
(`SparkContext.addFile`), and each executor Python process loads it once: Spark reuses its Python workers across
tasks, and `_classifier` keeps the loaded model for the life of the process.

Needs `pip install "wildvision[spark]"`; `import wildvision` never imports pyspark.
"""

from __future__ import annotations

import functools
import os
import shutil
import sys
import time
from contextlib import contextmanager
from itertools import islice
from pathlib import Path
from typing import Iterator, Mapping, Sequence
from urllib.parse import urlsplit

try:
    import pandas as pd
    from py4j.protocol import Py4JJavaError
    from pyspark import SparkFiles, TaskContext
    from pyspark.errors import AnalysisException
    from pyspark.sql import DataFrame, SparkSession
    from pyspark.sql import functions as F
    from pyspark.sql.types import DoubleType, LongType, StringType, StructField, StructType
except ImportError as error:
    raise ImportError(f"Spark scoring needs the spark extra ({error.name} is missing): "
                      "pip install 'wildvision[spark]'") from None

from wildvision.classifier import Classifier, default_model_path
from wildvision.model_info import ModelInfo
from wildvision.records import flat_columns, flatten
from wildvision.scan import IMAGE_SUFFIXES, ScanInput, ScanRecord, ScanSummary, scan

__all__ = ["read_photos", "record_schema", "score_archive", "score_photos", "session"]

_SPARK_TYPES = {str: StringType(), float: DoubleType(), int: LongType()}
# Hadoop glob patterns are case-sensitive: `*.{[jJ][pP][gG],...}` matches scan's suffixes in any case, as scan does.
_IMAGE_GLOB = "*.{" + ",".join(
    "".join(f"[{c.lower()}{c.upper()}]" for c in suffix[1:]) for suffix in sorted(IMAGE_SUFFIXES)
) + "}"


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
    it) instead of failing the job; Spark also skips 0-byte files (`score_archive` gives both their error records
    afterwards). Names starting with `_` or `.` are listed, as scan lists them, where Spark has the
    `ignoredPathSegmentRegex` option (4.3 has it); older versions skip them.
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


def record_schema(labels: Sequence[str]) -> StructType:
    """The records' columns: those `wildvision scan` writes to Parquet (`wildvision.records.flat_columns`)."""
    return StructType([StructField(name, _SPARK_TYPES[kind]) for name, kind in flat_columns(labels)])


def score_photos(
    photos: DataFrame, *, model: str | os.PathLike[str] | None = None, batch_size: int = 16
) -> DataFrame:
    """One record per row of `photos`, with the columns of `record_schema`.

    `photos` has a `path` column, which the records keep, and optionally `content`, the file's bytes (as
    `read_photos` and Spark's `binaryFile` source give them). Without `content`, executors read each path
    themselves, so paths must be local paths or `file:` URIs readable on every executor (a shared mount); rows
    whose path is null are dropped, since no record could be joined back to them.
    `model` is a path or URI the driver can read (default: the shipped model); it is shipped to each executor once.
    Each task decodes in `spark.task.cpus` threads and scores as many batches side by side, one onnxruntime thread
    each (what `scan` found fastest for this small model).
    """
    model_file = _ship_model(photos.sparkSession, model)
    labels = _classifier(SparkFiles.get(model_file)).info.labels
    columns = ["path", "content"] if "content" in photos.columns else ["path"]
    score = functools.partial(_score_partition, model_file=model_file, batch_size=batch_size)
    return photos.where(F.col("path").isNotNull()).select(*columns).mapInPandas(score, record_schema(labels))


def score_archive(
    spark: SparkSession, source: str, output: str, *, model: str | os.PathLike[str] | None = None,
    batch_size: int = 16, partitions: int | None = None,
) -> ScanSummary:
    """Score the image files under `source` into a new Parquet folder `output`, and summarise what was written.

    `partitions`: about how many tasks read and score the archive, each writing one Parquet file (default: Spark's
    file split, roughly 30 photos of 300 KB per task, since it counts 4 MB per file opened).
    """
    started = time.monotonic()
    photos = read_photos(spark, source)
    records = score_photos(photos, model=model, batch_size=batch_size)
    split = {} if partitions is None else {
        "spark.sql.files.minPartitionNum": str(partitions), "spark.sql.files.maxPartitionNum": str(partitions),
    }
    try:
        with _conf(spark, split):  # read when the write is planned
            records.write.parquet(output)
    except AnalysisException as error:
        if error.getCondition() == "PATH_ALREADY_EXISTS":
            raise FileExistsError(f"{output} already exists; remove it or write to another folder") from None
        raise
    _append_unread_files(photos, output, _classifier(SparkFiles.get(_model_file(model))).info)
    summary = _summary(spark.read.parquet(output))
    summary.seconds = time.monotonic() - started
    return summary


def _append_unread_files(photos: DataFrame, output: str, info: ModelInfo) -> None:
    """Give every file Spark listed but never handed over (0 bytes, or unreadable) its error record, as `scan` does.

    Spark's file reader silently drops 0-byte files, and skips unreadable ones under `ignoreCorruptFiles`; they are
    found by comparing the listing with the written records (on the cluster: only the few misses reach the driver).
    """
    spark = photos.sparkSession
    written = spark.read.parquet(output).select("path")
    missed = [row.path for row in _listed_files(photos).join(written, "path", "left_anti").collect()]
    if missed:
        records = [flatten(_unread_record(spark, path, info).to_dict(), info.labels) for path in missed]
        spark.createDataFrame(records, record_schema(info.labels)).coalesce(1).write.mode("append").parquet(output)


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


def _unread_record(spark: SparkSession, path: str, info: ModelInfo) -> ScanRecord:
    """The error record of a listed file Spark did not read: empty, vanished, or unreadable."""
    hadoop_path = spark._jvm.org.apache.hadoop.fs.Path(path)
    try:
        size = hadoop_path.getFileSystem(spark._jsc.hadoopConfiguration()).getFileStatus(hadoop_path).getLen()
        reason, category = ("empty file (0 bytes)", "empty") if size == 0 else ("cannot read file", "unreadable")
    except Py4JJavaError:
        reason, category = "cannot read file (it vanished after it was listed)", "unreadable"
    return ScanRecord(path, None, None, None, info.name, info.version, reason, category)


@functools.cache
def _classifier(model_file: str) -> Classifier:
    """This process's Classifier of `model_file` (an executor's, or the driver's for labels): loaded once, then reused."""
    return Classifier(model_file, threads=1)


def _score_partition(chunks: Iterator[pd.DataFrame], *, model_file: str, batch_size: int) -> Iterator[pd.DataFrame]:
    """mapInPandas: `scan` over all of a task's rows (streamed, never all in memory), records out a batch at a time."""
    cpus = TaskContext.get().cpus()
    classifier = _classifier(SparkFiles.get(model_file))
    labels = classifier.info.labels
    columns = [name for name, _ in flat_columns(labels)]
    records = scan(_inputs(chunks), classifier, batch_size=batch_size, workers=cpus, scorers=cpus)
    while batch := list(islice(records, batch_size)):
        yield pd.DataFrame([flatten(record.to_dict(), labels) for record in batch], columns=columns)


def _inputs(chunks: Iterator[pd.DataFrame]) -> Iterator[ScanInput]:
    for chunk in chunks:
        sources = chunk["content"] if "content" in chunk else map(_local_path, chunk["path"])
        yield from map(ScanInput, sources, chunk["path"])


def _local_path(path: str) -> Path:
    """`file:/a/b c.jpg`, `file:///a/b c.jpg` or `/a/b c.jpg` as a local path (Spark's paths are not %-encoded)."""
    return Path(urlsplit(path).path) if path.startswith("file:") else Path(path)


def _ship_model(spark: SparkSession, model: str | os.PathLike[str] | None) -> str:
    """Send the model file to every executor (and the driver's SparkFiles folder); the name `SparkFiles.get` takes."""
    source = _model_source(model)
    if "://" not in source and not Path(source).is_file():
        raise FileNotFoundError(f"model file not found: {source}")
    spark.sparkContext.addFile(source)
    return _model_file(model)


def _model_source(model: str | os.PathLike[str] | None) -> str:
    return os.fspath(model) if model is not None else str(default_model_path())


def _model_file(model: str | os.PathLike[str] | None) -> str:
    """The name under which `SparkFiles.get` finds a shipped model."""
    return os.path.basename(urlsplit(_model_source(model)).path)


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


def _summary(records: DataFrame) -> ScanSummary:
    summary = ScanSummary()
    for decision, category, count in records.groupBy("decision", "error_category").count().collect():
        if category is None:
            summary.scored += count
            summary.decisions[decision] += count
        else:
            summary.failed += count
            summary.failures[category] += count
    return summary
