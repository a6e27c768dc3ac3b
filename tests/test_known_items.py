"""The known-item index: re-posted photos (resized, re-compressed, cropped, mirrored) match, unrelated ones do not;
its SQLite file, scan records with `match` in every format, and the `index add` / `--match-index` / `--explain` CLI."""

from __future__ import annotations

import dataclasses
import io
import json
import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from conftest import make_photo
from PIL import Image, ImageOps

from wildvision import Classifier
from wildvision.cli import main
from wildvision.hashing import difference_hash, pdq_available, pdq_hashes
from wildvision.decision import DECISION_RANK, MatchPolicy
from wildvision.known_items import IndexFormatError, KnownItemIndex, MatchRule
from wildvision.listings import Listings, summarise_listings
from wildvision.model_info import OperatingPoint
from wildvision.records import RecordLayout, read_records, write_records
from wildvision.scan import find_images, scan_to_file
from wildvision.scorer import Scorer

LABELS = ("horn", "ivory", "not_ivory")


def listing_photo(label: str, seed: int) -> Image.Image:
    """A phone-sized generated photo with a textured background, as listings have (plain generated backgrounds give
    every photo nearly the same difference hash, which no real listing photo does)."""
    rng = np.random.default_rng(seed)
    texture = Image.fromarray(rng.integers(0, 256, (12, 15, 3), dtype=np.uint8)).resize((480, 384), Image.Resampling.BICUBIC)
    return Image.blend(make_photo(label, seed, size=(480, 384)), texture, 0.4)


def _jpeg(photo: Image.Image, quality: int) -> Image.Image:
    buffer = io.BytesIO()
    photo.save(buffer, "JPEG", quality=quality)
    return Image.open(io.BytesIO(buffer.getvalue()))


def _crop(photo: Image.Image, fraction: float) -> Image.Image:
    dx, dy = round(photo.width * fraction), round(photo.height * fraction)
    return photo.crop((dx, dy, photo.width - dx, photo.height - dy))


REPOSTS = {
    "resized": lambda p: p.resize((p.width // 2, p.height // 2)),
    "recompressed": lambda p: _jpeg(p, 60),
    "cropped": lambda p: _crop(p, 0.05),
    "mirrored": ImageOps.mirror,
    "all at once": lambda p: _jpeg(ImageOps.mirror(_crop(p, 0.03)).resize((320, 256)), 75),
}


def test_the_library_owns_the_hash_training_uses():
    pytest.importorskip("torch", reason="training needs the [train] extra")
    from training import dedupe

    assert dedupe.difference_hash is difference_hash


@pytest.mark.slow
def test_a_file_that_is_not_an_index_is_refused(tmp_path, tiny_classifier):
    not_an_index = tmp_path / "notes.sqlite"
    not_an_index.write_text("plain text")
    with pytest.raises(IndexFormatError, match="not a wildvision known-item index"):
        KnownItemIndex(not_an_index, tiny_classifier, create=True)
    with pytest.raises(FileNotFoundError, match="known-item index not found"):
        KnownItemIndex(tmp_path / "absent.sqlite", tiny_classifier)


@pytest.fixture(scope="module")
def tiny_classifier(tiny_run) -> Classifier:
    return Classifier(tiny_run["model"])


@pytest.fixture(scope="module")
def known(tiny_classifier, tmp_path_factory) -> tuple[KnownItemIndex, list[Image.Image]]:
    photos = [listing_photo(label, seed) for label in ("ivory", "horn") for seed in range(6)]
    index = KnownItemIndex(tmp_path_factory.mktemp("index") / "known.sqlite", tiny_classifier, create=True)
    index.add(photos, [f"case-{number}" for number in range(len(photos))])
    return index, photos


@pytest.mark.slow
@pytest.mark.parametrize("repost", list(REPOSTS))
def test_a_reposted_photo_matches_its_known_item(known, repost):
    index, photos = known
    for number, photo in enumerate(photos):
        match = index.match(REPOSTS[repost](photo))
        assert match is not None and match.reference == f"case-{number}", (repost, number, match)


@pytest.mark.slow
def test_unrelated_photos_match_nothing(known):
    index, _ = known
    unrelated = [listing_photo(label, seed) for label in LABELS for seed in range(100, 110)]
    assert [index.match(photo) for photo in unrelated] == [None] * len(unrelated)


@pytest.mark.slow
def test_the_index_file_is_documented_sqlite_and_readding_replaces(known, tiny_classifier, tmp_path):
    index, photos = known
    with sqlite3.connect(index.path) as connection:
        settings = dict(connection.execute("SELECT key, value FROM settings"))
        item, hashes, embedding, model = connection.execute(
            "SELECT id, hashes, embedding, embedding_model FROM items WHERE reference = 'case-0'").fetchone()
        pdq = connection.execute("SELECT pdq, quality FROM pdq_hashes WHERE item = ? ORDER BY rowid",
                                 (item,)).fetchall()
        assert connection.execute("PRAGMA user_version").fetchone()[0] == 3
    identity = tiny_classifier.identity
    assert settings == {"format": "wildvision-known-items", "model_name": "tiny", "model_version": "0.0.1",
                        "model_precision": "float32", "model_digest": identity.digest}
    assert len(hashes) == 18 * 32 and bytes(difference_hash(photos[0])) == hashes[:32]
    assert model == "tiny@0.0.1"
    if pdq_available():  # the photo's own PDQ first, as ThreatExchange exchanges it, then its crops' (full, half scale)
        assert pdq[0] == (bytes(pdq_hashes(photos[0]).own), pdq_hashes(photos[0]).quality) and len(pdq) == 12
    vector = np.frombuffer(embedding, "<f4")
    assert vector @ tiny_classifier.embed([photos[0]])[0] == pytest.approx(1, abs=1e-4)
    copy = Path(shutil.copy(index.path, tmp_path / "copy.sqlite"))
    reopened = KnownItemIndex(copy, tiny_classifier, rule=MatchRule(max_hash_distance=0, min_cosine=2.0,
                                                                      max_pdq_distance=0))
    reopened.add([photos[1]], ["case-0"])  # the same reference again: its item now shows photo 1
    assert len(reopened) == len(photos)
    assert reopened.match(photos[1]).reference in {"case-0", "case-1"} and reopened.match(photos[0]) is None


def relabelled(model: Path, version: str) -> Classifier:
    """The same model file under another version, as the index sees the next release."""
    classifier = Classifier(model)
    classifier.identity = dataclasses.replace(classifier.identity, version=version)
    return classifier


@pytest.mark.slow
def test_an_index_built_by_another_model_version_still_matches_by_hashes_and_reembed_restores_it(
    known, tiny_run, tmp_path, caplog
):
    index, photos = known
    copy = Path(shutil.copy(index.path, tmp_path / "copy.sqlite"))
    upgraded = relabelled(tiny_run["model"], "9.9.9")
    with caplog.at_level("WARNING", logger="wildvision.known_items"):
        survivor = KnownItemIndex(copy, upgraded)
        matches = [survivor.match(REPOSTS[name](photos[0])) for name in ("resized", "recompressed", "mirrored")]
    assert [m and (m.reference, m.cosine) for m in matches] == [("case-0", None)] * 3  # no embedding signal
    warned = [record.getMessage() for record in caplog.records]
    assert len(warned) == 1 and "made by another model (12 by tiny@0.0.1)" in warned[0] and "reembed" in warned[0]
    assert Scorer(upgraded, index=survivor).predict(photos[0])[0].decision == "block"  # hash 0: the strict rule
    # Embeddings are per item: a new photo is added under the new model, and reembed brings the old ones over.
    survivor.add([photos[1]], ["case-new"])
    report = survivor.reembed([photos[0], photos[2], photos[3]], ["case-0", "case-2", "case-absent"])
    assert (report.reembedded, report.absent, report.other_model) == (2, ("case-absent",), 12 - 2)
    match = survivor.match(REPOSTS["recompressed"](photos[0]))
    assert match.reference == "case-0" and match.cosine is not None and match.cosine > 0.9
    assert survivor.stats().embedded == 3


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".parquet"])
def test_records_with_matches_round_trip(tmp_path, suffix):
    scores = {"horn": 0.1, "ivory": 0.8, "not_ivory": 0.1}
    base = {"label": "ivory", "top_label": "ivory", "decision": "block", "model_name": "m", "model_version": "1", "model_precision": "int8",
            "model_digest": "sha256:0123456789abcdef", "thresholds": "ivory=0.8/0.99", "error": None,
            "error_category": None}
    records = [
        {"path": "a.jpg", "scores": scores, **base,
         "match": {"id": 3, "reference": "case-3", "hash_distance": 4, "cosine": 0.93, "pdq_distance": 12}},
        {"path": "b.jpg", "scores": scores, **base, "match": None},
        {"path": "d.jpg", "scores": scores, **base,  # an imported item: PDQ alone
         "match": {"id": 4, "reference": "pdq:619e79", "hash_distance": None, "cosine": None, "pdq_distance": 20}},
        {"path": "c.jpg", "scores": None, **{**base, "label": None, "top_label": None, "decision": None, "error": "empty input",
                                              "error_category": "empty"}, "match": None},
    ]
    path = tmp_path / f"records{suffix}"
    write_records(records, path, RecordLayout(tuple(LABELS), match=True))
    assert list(read_records(path)) == records


@pytest.fixture
def folders(tmp_path) -> tuple[Path, Path]:
    """Known photos, and listings: two re-posts, one unrelated photo and one broken file."""
    known, listings = tmp_path / "known", tmp_path / "listings"
    known.mkdir()
    listings.mkdir()
    for seed in range(4):
        listing_photo("ivory", seed).save(known / f"seized{seed}.jpg", quality=90)
    REPOSTS["all at once"](listing_photo("ivory", 1)).save(listings / "repost1.jpg")
    ImageOps.mirror(listing_photo("ivory", 2)).save(listings / "repost2.png")
    listing_photo("ivory", 50).save(listings / "unrelated.jpg")
    (listings / "broken.jpg").write_bytes(b"not a photo")
    return known, listings


@pytest.mark.slow
def test_cli_index_add_then_scan_with_matches(folders, tiny_run, tmp_path, capsys):
    known, listings = folders
    model, index = str(tiny_run["model"]), tmp_path / "known.sqlite"
    assert main(["--model", model, "index", "add", str(index), str(known), str(listings / "broken.jpg")]) == 1
    assert "added 4 photos, 1 failed; 4 known items" in capsys.readouterr().err
    assert main(["--model", model, "index", "add", str(index), str(known)]) == 0  # idempotent
    assert "4 known items" in capsys.readouterr().err
    for suffix in (".jsonl", ".csv"):
        output = tmp_path / f"scan{suffix}"
        status = main(["--model", model, "scan", str(listings), "-o", str(output), "--match-index", str(index)])
        assert status == 1  # broken.jpg is not a photo
        matches = {r["path"]: r["match"] for r in read_records(output)}
        assert {path: match and match["reference"] for path, match in matches.items()} == {
            "broken.jpg": None, "unrelated.jpg": None,
            "repost1.jpg": (known / "seized1.jpg").as_posix(), "repost2.png": (known / "seized2.jpg").as_posix()}
    plain = tmp_path / "plain.jsonl"
    assert main(["--model", model, "scan", str(listings), "-o", str(plain)]) == 1
    assert all("match" not in json.loads(line) for line in plain.read_text().splitlines())
    capsys.readouterr()
    assert main(["--model", model, "scan", str(listings), "-o", str(plain), "--match-index", str(index)]) == 2
    earlier, this_run = capsys.readouterr().err.split("but this run scores with")  # as `wildvision spark` says it
    assert "without --match-index" in earlier and "with --match-index" in this_run


def one_known_item(classifier: Classifier, photo: Path, reference: str, folder: Path) -> KnownItemIndex:
    """A new index in `folder` that knows one photo."""
    index = KnownItemIndex(folder / "k.sqlite", classifier, create=True)
    index.add([photo], [reference])
    return index


@pytest.mark.slow
def test_scan_with_an_index_keeps_the_scores_of_a_plain_scan(folders, tiny_classifier, tmp_path):
    known, listings = folders
    index = one_known_item(tiny_classifier, known / "seized1.jpg", "one", tmp_path)
    scan_to_file(find_images(listings), tmp_path / "matched.jsonl", tiny_classifier, index=index)
    scan_to_file(find_images(listings), tmp_path / "plain.jsonl", tiny_classifier)
    matched = [json.loads(line) for line in (tmp_path / "matched.jsonl").read_text().splitlines()]
    plain = [json.loads(line) for line in (tmp_path / "plain.jsonl").read_text().splitlines()]
    assert [{k: v for k, v in record.items() if k not in ("match", "decision")} for record in matched] == [
        {k: v for k, v in record.items() if k != "decision"} for record in plain]
    # a match can only make a decision stricter (`MatchPolicy`)
    assert all(DECISION_RANK[m["decision"] or "allow"] >= DECISION_RANK[p["decision"] or "allow"]
               for m, p in zip(matched, plain))


def never_flags(model: Path) -> dict[str, OperatingPoint]:
    """Thresholds no score reaches: whatever the classifier makes of a photo, it allows it."""
    return {label: OperatingPoint(1.0, 1.0) for label in Classifier(model).info.operating_points}


@pytest.fixture(scope="module")
def unsure(tiny_run) -> Classifier:
    """A classifier that allows every photo on its own, so that only a match can decide otherwise."""
    return Classifier(tiny_run["model"], operating_points=never_flags(tiny_run["model"]))


@pytest.mark.slow
def test_a_known_photo_is_blocked_in_a_scan_even_where_the_classifier_allows_it(folders, unsure, tmp_path):
    known, listings = folders
    index = one_known_item(unsure, known / "seized1.jpg", "case-1", tmp_path)
    scan_to_file(find_images(listings), tmp_path / "scan.jsonl", unsure, index=index)
    records = {record["path"]: record for record in read_records(tmp_path / "scan.jsonl")}
    assert records["repost1.jpg"]["match"]["reference"] == "case-1"
    assert records["repost1.jpg"]["decision"] == "block"
    assert records["unrelated.jpg"]["decision"] == "allow" and records["unrelated.jpg"]["match"] is None
    review_only = tmp_path / "review.jsonl"
    scan_to_file(find_images(listings), review_only, unsure, index=index, match_policy=MatchPolicy(strict="review"))
    assert {r["path"]: r["decision"] for r in read_records(review_only)}["repost1.jpg"] == "review"
    # Its listing record names the known item among its reasons, decided by the policy the scan decided by.
    for output, policy, decision in (("scan.jsonl", MatchPolicy(), "block"),
                                     ("review.jsonl", MatchPolicy(strict="review"), "review")):
        records = list(read_records(tmp_path / output))
        (listing,) = summarise_listings(records, Listings({"repost1.jpg": "L1", "unrelated.jpg": "L1"}),
                                        unsure.info.operating_points, unsure.lexicon, policy)
        known_items = [reason for reason in listing.reasons if reason["signal"] == "known_item"]
        position = listing.paths.index("repost1.jpg")
        assert listing.decision == decision
        assert [(r["source"], r["phrase"]) for r in known_items] == [(f"photo {position}", "case-1")]


@pytest.mark.slow
def test_cli_predict_blocks_a_known_photo_and_names_its_reference(folders, tiny_run, tmp_path, capsys):
    known, listings = folders
    model, index = str(tiny_run["model"]), tmp_path / "known.sqlite"
    points = tmp_path / "never.json"
    points.write_text(json.dumps({label: dataclasses.asdict(point)
                                  for label, point in never_flags(tiny_run["model"]).items()}))
    assert main(["--model", model, "index", "add", str(index), str(known / "seized1.jpg")]) == 0
    capsys.readouterr()
    assert main(["--model", model, "--operating-points", str(points), "predict", "--json", "--match-index",
                 str(index), str(listings / "repost1.jpg"), str(listings / "unrelated.jpg")]) == 0
    repost, unrelated = (json.loads(line) for line in capsys.readouterr().out.splitlines())
    assert repost["decision"] == "block" and repost["match"]["reference"] == (known / "seized1.jpg").as_posix()
    assert unrelated["decision"] == "allow" and unrelated["match"] is None


@pytest.mark.slow
def test_a_listing_with_a_known_photo_is_blocked_and_the_reason_names_the_item(folders, unsure, tmp_path):
    known, listings = folders
    index = KnownItemIndex(tmp_path / "k.sqlite", unsure, create=True)
    index.add([known / "seized1.jpg"], ["case-1"])
    listing, matches = Scorer(unsure, index=index).predict_listing(
        [listings / "unrelated.jpg", listings / "repost1.jpg"], title="old carving")
    assert listing.decision == "block" and [m and m.reference for m in matches] == [None, "case-1"]
    assert [(r.source, r.phrase) for r in listing.reasons if r.signal == "known_item"] == [("photo 1", "case-1")]
    assert Scorer(unsure).predict_listing([listings / "repost1.jpg"], title="old carving")[0].decision == "allow"


@pytest.mark.slow
def test_cli_predict_explain_writes_an_overlay_per_photo(folders, tiny_run, tmp_path, capsys):
    _, listings = folders
    photos = [listings / "repost1.jpg", listings / "unrelated.jpg", listings / "broken.jpg"]
    overlays = tmp_path / "overlays"
    assert main(["--model", str(tiny_run["model"]), "predict", *map(str, photos), "--explain", str(overlays),
                 "--json"]) == 1  # the broken photo fails, the others are explained
    results = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert [Path(r["explanation"]).name for r in results] == ["repost1.jpg.explain.png", "unrelated.jpg.explain.png"]
    for result, photo in zip(results, photos):
        with Image.open(result["explanation"]) as overlay, Image.open(photo) as original:
            # at the photo's own size, though a large JPEG is scored at reduced scale: a reviewer sees the detail
            assert overlay.format == "PNG" and overlay.size == original.size
    (tmp_path / "other").mkdir()
    listing_photo("horn", 1).save(tmp_path / "other" / "repost1.jpg")
    assert main(["--model", str(tiny_run["model"]), "predict", str(photos[0]), str(tmp_path / "other" / "repost1.jpg"),
                 "--explain", str(overlays)]) == 2
    assert "share a file name" in capsys.readouterr().err


def test_an_index_says_which_model_file_built_it(tmp_path, shipped_model):
    int8 = Classifier(precision="int8")
    KnownItemIndex(tmp_path / "known.sqlite", int8, create=True)
    reopened = KnownItemIndex(tmp_path / "known.sqlite", Classifier(shipped_model))
    assert reopened.built_with == int8.identity
    assert reopened.built_with.digest != Classifier(shipped_model).identity.digest


@pytest.mark.slow
def test_cli_index_lists_removes_and_counts_its_items_in_a_wal_file(folders, tiny_run, tmp_path, capsys):
    known, listings = folders
    model, index = str(tiny_run["model"]), tmp_path / "known.sqlite"
    assert main(["--model", model, "index", "add", str(index), str(known)]) == 0
    capsys.readouterr()
    assert main(["--model", model, "index", "list", str(index), "--json"]) == 0
    items = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    references = [(known / f"seized{seed}.jpg").as_posix() for seed in range(4)]
    assert [item["reference"] for item in items] == references and all(item["added_at"] for item in items)
    assert main(["--model", model, "index", "remove", str(index), references[1], "case-absent"]) == 1
    err = capsys.readouterr().err
    assert "case-absent: error: no such item" in err and "removed 1 items; 3 known items" in err
    assert main(["--model", model, "index", "stats", str(index), "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["items"] == 3 and stats["file_bytes"] > 0 and stats["built_with"].startswith("tiny")
    with sqlite3.connect(index) as connection:  # readers (a scan, the service) never wait for a writer
        assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert KnownItemIndex(index, Classifier(model)).match(listings / "repost1.jpg") is None  # its item went
