"""Industry hashes in the known-item index: PDQ stored and matched (mirrors and rotations included), a format-1 file
upgraded in place, hash lists exported and imported (ThreatExchange's CSV), expiry, and the index commands."""

from __future__ import annotations

import csv
import json
import re
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps
from conftest import needs_pdq
from test_known_items import REPOSTS, listing_photo, never_flags

from wildvision import Classifier
from wildvision.cli import main
from wildvision.decision import MatchPolicy
from wildvision.hashing import pdq_available, pdq_hashes, pdq_hex
from wildvision.known_items import (
    COLUMNS, HashListError, KnownItemIndex, MatchRule, export_hash_list, import_hash_list, pdq_ladder, utc_time,
    variant_hashes,
)
from wildvision.scan import layout_of, run_facts

LADDER = 12  # PDQ hashes an item added from a photo keeps: the photo's and 5 centre crops', at full and half scale
PDQ_ONLY = MatchRule(max_hash_distance=-1, min_cosine=2.0)  # difference hashes and embeddings can never match


@pytest.fixture(scope="module")
def classifier(tiny_run) -> Classifier:
    return Classifier(tiny_run["model"])


@pytest.fixture(scope="module")
def photos() -> list[Image.Image]:
    return [listing_photo(label, seed) for label in ("ivory", "horn") for seed in range(4)]


@pytest.fixture
def index(classifier, photos, tmp_path) -> KnownItemIndex:
    index = KnownItemIndex(tmp_path / "known.sqlite", classifier, create=True)
    index.set_source("platform-a")
    index.add(photos[:4], [f"case-{n}" for n in range(4)], label="ivory")
    index.add(photos[4:], [f"case-{n}" for n in range(4, 8)], label="horn", expires_at=utc_time("2099-01-01"))
    return index


@needs_pdq
@pytest.mark.slow
@pytest.mark.parametrize("turn", ["mirrored", "rotated 90", "upside down"])
def test_a_mirrored_or_rotated_repost_matches_the_items_one_pdq_hash(index, photos, turn):
    transform = {"mirrored": ImageOps.mirror, "rotated 90": lambda p: p.rotate(90, expand=True),
                 "upside down": ImageOps.flip}[turn]
    by_pdq = KnownItemIndex(index.path, index.classifier, rule=PDQ_ONLY)
    for number, photo in enumerate(photos):
        match = by_pdq.match(transform(photo))
        # PDQ's dihedral variants are close, not equal, to the hash of a turned photo (10-12 bits on these photos); a
        # query also hashes its own mirror, which meets a mirrored re-post's item all but exactly
        most = 2 if turn == "mirrored" else 16
        assert match is not None and match.reference == f"case-{number}" and match.pdq_distance <= most, (turn, match)


@needs_pdq
@pytest.mark.slow
def test_a_flat_photo_whose_pdq_quality_is_low_never_matches_by_pdq(classifier, tmp_path):
    flat = Image.new("RGB", (480, 384), (200, 190, 170))
    assert pdq_hashes(flat).quality < 50
    index = KnownItemIndex(tmp_path / "k.sqlite", classifier, create=True, rule=PDQ_ONLY)
    index.add([flat], ["flat"])
    assert index.match(flat) is None
    assert KnownItemIndex(index.path, classifier).match(flat).pdq_distance is None  # found by its other signals


_FORMAT_1 = """
CREATE TABLE settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE items (id INTEGER PRIMARY KEY, reference TEXT NOT NULL UNIQUE, hashes BLOB NOT NULL,
                    embedding BLOB NOT NULL, added_at TEXT NOT NULL);
PRAGMA user_version = 1;
"""


def format_1_index(path: Path, classifier: Classifier, photos: list[Image.Image]) -> Path:
    """An index as wildvision wrote it before PDQ (format 1), built by hand."""
    with sqlite3.connect(path) as connection:
        connection.executescript(_FORMAT_1)
        connection.executemany("INSERT INTO settings VALUES (?, ?)",
                               {"format": "wildvision-known-items", **classifier.identity.to_fields()}.items())
        embeddings = classifier.embed(photos).astype("<f4")
        connection.executemany("INSERT INTO items (reference, hashes, embedding, added_at) VALUES (?, ?, ?, ?)",
                               [(f"old-{n}", variant_hashes(photo).tobytes(), vector.tobytes(),
                                 f"2026-01-0{n + 1}T00:00:00+00:00")
                                for n, (photo, vector) in enumerate(zip(photos, embeddings))])
    return path


@pytest.mark.slow
def test_a_format_1_index_is_upgraded_in_place_keeping_every_item_and_says_so_once(classifier, photos, tmp_path, caplog):
    path = format_1_index(tmp_path / "old.sqlite", classifier, photos[:3])
    with caplog.at_level("WARNING", logger="wildvision.known_items"):
        index = KnownItemIndex(path, classifier)
        KnownItemIndex(path, classifier)  # already upgraded: nothing more to say
    assert [r.getMessage() for r in caplog.records] == [
        f"{path}: upgraded from format 1 to 3, keeping its 3 items; they have no PDQ hash until "
        "`wildvision index reembed` recomputes them from their photos"]
    assert [(item.reference, item.added_at, item.signals) for item in index.items()] == [
        (f"old-{n}", f"2026-01-0{n + 1}T00:00:00+00:00", "hashes+embedding") for n in range(3)]
    with sqlite3.connect(path) as connection:
        assert connection.execute("PRAGMA user_version").fetchone()[0] == 3
    match = index.match(REPOSTS["recompressed"](photos[1]))
    assert match.reference == "old-1" and match.pdq_distance is None and match.cosine > 0.9
    if pdq_available():
        assert index.reembed([photos[1]], ["old-1"]).reembedded == 1
        assert index.match(REPOSTS["recompressed"](photos[1])).pdq_distance is not None


_FORMAT_2 = """
CREATE TABLE settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE items (id INTEGER PRIMARY KEY, reference TEXT NOT NULL UNIQUE, label TEXT, source TEXT,
                    added_at TEXT NOT NULL, expires_at TEXT, pdq BLOB, pdq_quality INTEGER, hashes BLOB,
                    embedding BLOB, embedding_model TEXT);
PRAGMA user_version = 2;
"""


@needs_pdq
@pytest.mark.slow
def test_a_format_2_index_keeps_each_items_one_pdq_hash_and_gets_its_crops_hashes_from_reembed(
    classifier, photos, tmp_path, caplog
):
    path = tmp_path / "format-2.sqlite"
    with sqlite3.connect(path) as connection:  # as wildvision wrote it with one PDQ hash an item
        connection.executescript(_FORMAT_2)
        connection.executemany("INSERT INTO settings VALUES (?, ?)",
                               {"format": "wildvision-known-items", **classifier.identity.to_fields()}.items())
        own = pdq_hashes(photos[0])
        connection.execute("INSERT INTO items (reference, added_at, pdq, pdq_quality, hashes, embedding, "
                           "embedding_model) VALUES ('photo', '2026-12-01T00:00:00+00:00', ?, ?, ?, ?, ?)",
                           (own.own.tobytes(), own.quality, variant_hashes(photos[0]).tobytes(),
                            classifier.embed([photos[0]]).astype("<f4").tobytes(), "tiny@0.0.1"))
        connection.execute("INSERT INTO items (reference, source, added_at, pdq) VALUES ('imported', 'p', "
                           "'2026-12-02T00:00:00+00:00', ?)", (pdq_hashes(photos[1]).own.tobytes(),))
    with caplog.at_level("WARNING", logger="wildvision.known_items"):
        index = KnownItemIndex(path, classifier, rule=PDQ_ONLY)
        KnownItemIndex(path, classifier)
    assert [r.getMessage() for r in caplog.records] == [
        f"{path}: upgraded from format 2 to 3, keeping its 2 items; their photos' PDQ hashes are kept, their crops "
        "have none until `wildvision index reembed` recomputes them from their photos"]
    assert [(i.reference, i.signals) for i in index.items()] == [("photo", "pdq+hashes+embedding"), ("imported", "pdq")]
    assert _pdq_column(path) == [("imported", pdq_hashes(photos[1]).own.tobytes(), None),
                                 ("photo", own.own.tobytes(), own.quality)]
    assert index.match(REPOSTS["recompressed"](photos[1])).reference == "imported"
    cropped = REPOSTS["cropped"](photos[0])
    assert index.match(cropped) is None  # the photo's one hash: crops move PDQ past its distance
    assert index.reembed([photos[0]], ["photo"]).reembedded == 1
    assert index.match(cropped).reference == "photo" and index.stats().pdq_hashes == LADDER + 1


@needs_pdq
@pytest.mark.slow
def test_export_then_import_into_a_fresh_index_round_trips_and_matches_a_repost_by_pdq_alone(
    index, classifier, photos, tmp_path
):
    exported = export_hash_list(index, tmp_path / "list.csv")
    assert (exported.rows, exported.items, exported.without_pdq) == (8 * LADDER, 8, 0)
    with (tmp_path / "list.csv").open(newline="") as file:
        rows = list(csv.reader(file))
    assert tuple(rows[0]) == COLUMNS
    # One row per hash, an item's together: its photo's own first (what a one-hash-per-photo tool would exchange),
    # then its crops'.
    assert rows[1][:5] == ["pdq", pdq_hex(pdq_hashes(photos[0]).own), "platform-a", "POSITIVE_CLASS", "ivory"]
    assert [row[5] for row in rows[1:]] == [f"case-{n}" for n in range(8) for _ in range(LADDER)]
    assert [row[1] for row in rows[1 : 1 + LADDER]] == [pdq_hex(np.frombuffer(h, np.uint8)) for h, _ in
                                                        pdq_ladder(photos[0])]
    fresh = KnownItemIndex(tmp_path / "fresh.sqlite", classifier, create=True)
    imported = import_hash_list(fresh, tmp_path / "list.csv")
    assert (imported.rows, imported.new, imported.hashes) == (8, 8, 8 * LADDER)

    def listed(some: KnownItemIndex) -> list[tuple]:
        return [(i.reference, i.added_at, i.label, i.source or some.source, i.expires_at) for i in some.items()]

    assert listed(fresh) == listed(index)
    assert {i.signals for i in fresh.items()} == {"pdq"}
    assert _pdq_column(fresh.path) == _pdq_column(index.path)
    for name in ("resized", "recompressed", "mirrored"):
        match = fresh.match(REPOSTS[name](photos[2]))
        assert (match.reference, match.hash_distance, match.cosine) == ("case-2", None, None), name
        assert match.pdq_distance <= 31
    assert fresh.match(listing_photo("ivory", 77)) is None
    again = import_hash_list(fresh, tmp_path / "list.csv")  # idempotent
    assert (again.rows, again.new, again.hashes) == (8, 0, 8 * LADDER) and listed(fresh) == listed(index)
    assert _pdq_column(fresh.path) == _pdq_column(index.path) and fresh.stats().pdq_hashes == 8 * LADDER
    index.add([photos[0]], ["case-0"])  # re-adding replaces the item's hashes, removing drops them
    assert index.stats().pdq_hashes == 8 * LADDER
    fresh.remove(["case-0"])
    assert fresh.stats().pdq_hashes == 7 * LADDER


@needs_pdq
@pytest.mark.slow
def test_a_centre_cropped_repost_matches_an_imported_list_by_its_crops_hashes_where_one_hash_a_photo_misses(
    index, classifier, photos, tmp_path
):
    export_hash_list(index, tmp_path / "ladder.csv")
    with (tmp_path / "ladder.csv").open(newline="") as file:
        rows = list(csv.DictReader(file))
    with (tmp_path / "photos.csv").open("w", newline="") as file:  # as tools that hash each photo once exchange it
        writer = csv.DictWriter(file, COLUMNS)
        writer.writeheader()
        writer.writerows({row["reference"]: row for row in reversed(rows)}.values())  # each item's first row
    ladder, photos_only = (KnownItemIndex(tmp_path / f"{name}.sqlite", classifier, create=True, rule=PDQ_ONLY)
                           for name in ("ladder", "photos"))
    assert import_hash_list(ladder, tmp_path / "ladder.csv").hashes == 8 * LADDER
    assert import_hash_list(photos_only, tmp_path / "photos.csv").hashes == 8
    for number, photo in enumerate(photos):
        cropped = REPOSTS["cropped"](photo)  # 5 % cut from each side: 80-96 bits from the photo's own PDQ
        match = ladder.match(cropped)
        assert match is not None and match.reference == f"case-{number}" and match.pdq_distance <= 20, match
        assert photos_only.match(cropped) is None


def _pdq_column(path: Path) -> list[tuple]:
    """Every stored PDQ hash, by reference, in the order stored."""
    with sqlite3.connect(path) as connection:
        return connection.execute("SELECT reference, pdq, quality FROM pdq_hashes JOIN items ON items.id = item "
                                  "ORDER BY reference, pdq_hashes.rowid").fetchall()


@pytest.mark.slow
def test_expired_items_never_match_are_listed_counted_and_removed(classifier, photos, tmp_path):
    index = KnownItemIndex(tmp_path / "k.sqlite", classifier, create=True)
    index.add([photos[0]], ["gone"], expires_at=utc_time("2001-02-03"))
    index.add([photos[1]], ["kept"], expires_at=utc_time("2099-12-31T23:00:00+02:00"))
    assert index.match(photos[0]) is None and index.match(photos[1]).reference == "kept"
    assert [(i.reference, i.expires_at) for i in index.items()] == [
        ("gone", "2001-02-03T00:00:00+00:00"), ("kept", "2099-12-31T21:00:00+00:00")]
    assert (index.stats().items, index.stats().expired) == (2, 1)
    assert index.remove_expired() == 1 and [i.reference for i in index.items()] == ["kept"]


HASH = "f" * 16 + "0" * 48


@pytest.mark.slow
@pytest.mark.parametrize("row, problem", [
    (f"pdq,{HASH[:-1]},p,POSITIVE_CLASS,ivory", "not a PDQ hash (64 hex digits)"),
    (f"pdq,{HASH[:-1]}g,p,POSITIVE_CLASS,ivory", "not a PDQ hash"),
    (f"pdq,{HASH},,POSITIVE_CLASS,ivory", "no source platform"),
    (f"pdq,{HASH},p,MAYBE,ivory", "unknown category 'MAYBE'"),
    (f"pdq,{HASH},p,POSITIVE_CLASS,ivory,r,yesterday", "not a date or time"),
])
def test_a_hash_list_with_a_bad_row_is_refused_naming_file_and_line_and_imports_nothing(classifier, tmp_path, row, problem):
    hash_list = tmp_path / "list.csv"
    good = f"pdq,{'0' * 64},p,POSITIVE_CLASS,ivory"
    hash_list.write_text("signal_type,signal_str,collab,category,tags,reference,added_at\n"
                         f"{good}\nmd5,{'a' * 32},p,POSITIVE_CLASS,\n{row}\n")
    index = KnownItemIndex(tmp_path / "k.sqlite", classifier, create=True)
    with pytest.raises(HashListError, match=f"^{re.escape(f'{hash_list}:4: {problem}')}"):
        import_hash_list(index, hash_list)
    assert len(index) == 0
    (tmp_path / "bare.csv").write_text(f"hash\n{HASH}\n")
    with pytest.raises(HashListError, match="bare.csv:1: a hash list needs the columns signal_type and signal_str"):
        import_hash_list(index, tmp_path / "bare.csv")


@needs_pdq
@pytest.mark.slow
def test_an_index_of_pdq_only_items_says_it_needs_the_pdq_extra_without_pdqhash(index, tmp_path, monkeypatch):
    export_hash_list(index, tmp_path / "list.csv")
    fresh = KnownItemIndex(tmp_path / "fresh.sqlite", index.classifier, create=True)
    import_hash_list(fresh, tmp_path / "list.csv")
    for module in ("wildvision.classifier", "wildvision.known_items.index"):
        monkeypatch.setattr(f"{module}.pdq_available", lambda: False)
    with pytest.raises(ImportError, match=r"8 items known by their PDQ hash alone .* pip install 'wildvision\[pdq\]'"):
        fresh.match(listing_photo("ivory", 0))
    assert index.match(listing_photo("ivory", 0)).reference == "case-0"  # photo items match by their other signals


@needs_pdq
@pytest.mark.slow
def test_threatexchange_reads_our_hash_list_and_we_read_what_it_writes(index, photos, tmp_path):
    pytest.importorskip("threatexchange", reason="needs Meta's python-threatexchange (pip install threatexchange)")
    from threatexchange.cli.dataset_cmd import DatasetCommand
    from threatexchange.exchanges.fetch_state import FetchedSignalMetadata
    from threatexchange.signal_type.pdq.signal import PdqSignal

    export_hash_list(index, tmp_path / "ours.csv")
    with (tmp_path / "ours.csv").open(newline="") as file:
        signals = [(PdqSignal.validate_signal_str(row["signal_str"]), row["reference"]) for row in csv.DictReader(file)]
    theirs_index = PdqSignal.get_index_cls().build(signals)  # ThreatExchange's own PDQ index, from our list
    repost = tmp_path / "repost.jpg"
    REPOSTS["recompressed"](photos[3]).save(repost)
    # Its index holds each of our hashes, several an item: a re-post may meet more than one of its item's.
    assert {result.metadata for result in theirs_index.query(PdqSignal.hash_from_file(repost))} == {"case-3"}
    # What `threatexchange dataset --print-signals --csv` writes, by its own code, imports as it is: one item a row.
    photos_own = signals[::LADDER]  # each item's first row: its photo's own hash
    with (tmp_path / "theirs.csv").open("w", newline="") as file:
        writer = csv.DictWriter(file, ["signal_type", "signal_str", "collab", "category", "tags"])
        writer.writeheader()
        for signal, _ in photos_own[:2]:
            DatasetCommand._print_csv(None, writer, "Sample Data", PdqSignal, signal, FetchedSignalMetadata())
    fresh = KnownItemIndex(tmp_path / "fresh.sqlite", index.classifier, create=True)
    assert import_hash_list(fresh, tmp_path / "theirs.csv").rows == 2
    assert fresh.match(repost) is None and fresh.match(photos[1]).reference == f"pdq:{photos_own[1][0]}"
    assert {item.source for item in fresh.items()} == {"Sample Data"}


def test_a_scans_run_facts_state_the_match_policy(classifier, tmp_path):
    index = KnownItemIndex(tmp_path / "k.sqlite", classifier, create=True)
    facts = run_facts(classifier, layout_of(classifier, index), MatchPolicy(strict="review"))
    assert facts["match_policy"].startswith("strict=review (pdq<=23 hash<=14 cosine>=0.99) loose=review")
    assert run_facts(classifier, layout_of(classifier))["match_policy"] is None


@needs_pdq
@pytest.mark.slow
def test_cli_index_add_list_export_import_expire_and_reembed(tiny_run, photos, tmp_path, capsys):
    model, index, fresh = str(tiny_run["model"]), tmp_path / "known.sqlite", tmp_path / "fresh.sqlite"
    for number, photo in enumerate(photos[:3]):
        photo.save(tmp_path / f"seized{number}.png")
    seized = [str(tmp_path / f"seized{number}.png") for number in range(3)]
    assert main(["--model", model, "index", "add", str(index), *seized[:2], "--label", "ivory", "--source", "plat",
                 "--expires-in", "30"]) == 0
    assert main(["--model", model, "index", "add", str(index), seized[2], "--expires", "2001-01-01"]) == 0
    capsys.readouterr()
    assert main(["--model", model, "index", "list", str(index), "--json"]) == 0
    listed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(i["label"], i["signals"], i["expires_at"] is not None) for i in listed] == [
        ("ivory", "pdq+hashes+embedding", True)] * 2 + [(None, "pdq+hashes+embedding", True)]
    assert main(["--model", model, "index", "export", str(index), str(tmp_path / "list.csv")]) == 0
    assert "exported 36 PDQ hashes of 3 items" in capsys.readouterr().err
    assert main(["--model", model, "index", "import", str(fresh), str(tmp_path / "list.csv")]) == 0
    assert "imported 36 PDQ hashes of 3 items (3 new); 3 known items" in capsys.readouterr().err
    assert main(["--model", model, "index", "stats", str(fresh), "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert (stats["items"], stats["expired"], stats["pdq_only"], stats["embedded"]) == (3, 1, 3, 0)
    assert main(["--model", model, "index", "remove", str(fresh), "--expired"]) == 0
    assert "removed 1 items; 2 known items" in capsys.readouterr().err
    (tmp_path / "bad.csv").write_text("signal_type,signal_str,collab\npdq,abc,plat\n")
    assert main(["--model", model, "index", "import", str(fresh), str(tmp_path / "bad.csv")]) == 2
    assert f"{tmp_path / 'bad.csv'}:2: not a PDQ hash" in capsys.readouterr().err
    upgraded = tmp_path / "upgraded.onnx"
    _relabel_file(tiny_run["model"], upgraded)
    assert main(["--model", str(upgraded), "index", "reembed", str(index), seized[0], str(tmp_path / "nope.png")]) == 1
    err = capsys.readouterr().err
    assert "re-embedded 1 items" in err and "2 items still carry another model's embedding or none" in err


def test_cli_export_of_an_index_without_pdq_hashes_fails_and_says_how_to_add_them(
    tiny_run, classifier, photos, tmp_path, capsys, monkeypatch
):
    import wildvision.cli
    import wildvision.known_items.index

    for module in (wildvision.known_items.index, wildvision.cli):  # as where pdqhash is not installed
        monkeypatch.setattr(module, "pdq_available", lambda: False)
    index = KnownItemIndex(tmp_path / "known.sqlite", classifier, create=True)
    index.add(photos[:2], ["a", "b"])
    model = str(tiny_run["model"])
    assert main(["--model", model, "index", "export", str(index.path), str(tmp_path / "list.csv")]) == 1
    err = capsys.readouterr().err
    assert "exported 0 PDQ hashes of 0 items" in err
    assert "2 items have no PDQ hash and are not in the list: pip install 'wildvision[pdq]', then" in err


def _relabel_file(model: Path, destination: Path) -> None:
    """A copy of the model file whose metadata names another version: the next release, to the index."""
    onnx = pytest.importorskip("onnx", reason="rewriting a model's metadata needs onnx (the train extra)")
    proto = onnx.load(model)
    for prop in proto.metadata_props:
        if prop.key == "wildvision":
            metadata = json.loads(prop.value)
            metadata["version"] = "9.9.9"
            prop.value = json.dumps(metadata)
    onnx.save(proto, destination)


@needs_pdq
@pytest.mark.slow
def test_cli_match_policy_decides_what_a_known_photo_gets(tiny_run, photos, tmp_path, capsys):
    model, index = str(tiny_run["model"]), tmp_path / "known.sqlite"
    points = tmp_path / "never.json"
    points.write_text(json.dumps({label: {"review": p.review, "block": p.block}
                                  for label, p in never_flags(tiny_run["model"]).items()}))
    photos[0].save(tmp_path / "seized.png")
    REPOSTS["recompressed"](photos[0]).save(tmp_path / "repost.jpg")
    assert main(["--model", model, "index", "add", str(index), str(tmp_path / "seized.png")]) == 0
    decided = {}
    for policy in ([], ["--strict-match", "review"]):
        capsys.readouterr()
        assert main(["--model", model, "--operating-points", str(points), "predict", "--json", "--match-index",
                     str(index), str(tmp_path / "repost.jpg"), *policy]) == 0
        decided[" ".join(policy)] = json.loads(capsys.readouterr().out)["decision"]
    assert decided == {"": "block", "--strict-match review": "review"}
    assert main(["--model", model, "predict", str(tmp_path / "repost.jpg"), "--loose-match", "block"]) == 2
    assert "need --match-index" in capsys.readouterr().err
