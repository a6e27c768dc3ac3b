"""A listing is its photos and its words: the seller's title and description are read with the shipped lexicon, a
product they name for sale flags the listing, news, colour lists and look-alike materials do not, `block` needs the
image and the words to agree, words never lower what a photo decided, and every reason names its source — through
the Python API, `scan --listings`, the service and the client alike."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import make_photo
from wildvision import Classifier, OperatingPoint, Prediction
from wildvision.cli import main
from wildvision.decision import decide, decide_listing, decided_label, flags
from wildvision.text import Lexicon, LexiconError
from wildvision.words import listing_words

IVORY = {"ivory": OperatingPoint(review=0.5, block=0.9)}


@pytest.fixture(scope="module")
def lexicon() -> Lexicon:
    return Lexicon.load()


@pytest.fixture(scope="module")
def classifier(shipped_model) -> Classifier:
    return Classifier(shipped_model, threads=1)


def photo(ivory: float) -> Prediction:
    scores = {"ivory": ivory, "not_ivory": 1 - ivory}
    decision = decide(scores, IVORY)
    return Prediction(scores, decided_label(scores, decision, (), IVORY), max(scores, key=scores.get), decision,
                      "m", "1", "float32", "sha256:0", "ivory=0.5/0.9")


def decided(lexicon: Lexicon, photos=(), **words):
    return decide_listing(list(photos), IVORY, words=listing_words(lexicon, **words), weights=lexicon.weights)


# What the words say, through the shipped lexicon and its fitted weights.

@pytest.mark.parametrize("title", [
    "Antique mammoth ivory netsuke, Meiji, $950",
    "Vòng tay ngà voi thật, giá 3tr, ship COD",
    "象牙手镯 老料 出售 包邮",
    "Pulsera de marfil antigua, envío gratis",
])
def test_a_title_alone_flags_a_listing(lexicon, title):
    listing = decided(lexicon, title=title)
    assert listing.decision == "review" and listing.labels == ("ivory",)


@pytest.mark.parametrize(("title", "description"), [
    ("Kenya burns 105 tonnes of seized ivory", "Rangers and customs officers say poaching has fallen since the ban on "
                                               "the ivory trade."),
    ("Wedding bouquet", "Peach, Blush, Ivory, Champagne flower petals"),
    ("Cotton throw", "Available in blue, white, ivory, gold or pink"),
    ("Royal Worcester Blush Ivory vase, 1890s", ""),
    ("Shark fin antenna for cars, universal", ""),
])
def test_news_colour_lists_and_look_alike_materials_do_not_flag(lexicon, title, description):
    assert decided(lexicon, title=title, description=description).decision == "allow"


@pytest.mark.parametrize("title", ["#HandCarved #Ivory #RoseBrooch", "Mammoth IvoryBuy this piece today",
                                   "Old pipe #gadinggajah #antik, harga nego"])
def test_a_hashtag_and_a_run_on_word_name_the_product(lexicon, title):
    assert decided(lexicon, title=title).labels == ("ivory",)


def test_block_needs_the_image_and_the_words_to_agree(lexicon):
    words = {"title": "Carved ivory figure for sale", "description": "Genuine elephant ivory, $1,200, DM me"}
    assert decided(lexicon, [photo(0.1)], **words).decision == "review"  # title and description: one seller
    assert decided(lexicon, [photo(0.1), photo(0.6)], **words).decision == "block"  # a photo agrees
    assert decided(lexicon, [photo(0.6)]).decision == "review"  # the photo alone, at review


def test_words_never_lower_what_a_photo_decided(lexicon):
    listing = decided(lexicon, [photo(0.95)], title="Seized ivory destroyed, customs say")
    assert listing.decision == "block"


def test_every_reason_names_its_source(lexicon):
    listing = decided(lexicon, [photo(0.1), photo(0.7)], title="Ivory netsuke", description="Price $300, DM")
    reasons = {(reason.source, reason.signal): reason for reason in listing.reasons}
    assert reasons["title", "product"].phrase == "ivory" and reasons["title", "product"].label == "ivory"
    assert {r.phrase for r in listing.reasons if r.source == "description" and r.signal == "sale"} == {
        "price", "$300", "dm"}
    assert reasons["photo 1", "image"].score == pytest.approx(0.7) and ("photo 0", "image") not in reasons
    assert listing.deciding_photo == 1 and 0.5 <= listing.scores["ivory"] <= 1.0


def test_the_fused_score_grows_with_each_signal_and_ranks_news_below_sales(lexicon):
    nothing = decided(lexicon, title="Blue ceramic vase").scores["ivory"]
    news = decided(lexicon, title="Ivory seized at the port, police say").scores["ivory"]
    named = decided(lexicon, title="Carved ivory figure").scores["ivory"]
    for_sale = decided(lexicon, title="Carved ivory figure, $400, free shipping").scores["ivory"]
    with_photo = decided(lexicon, [photo(0.95)], title="Carved ivory figure, $400, free shipping").scores["ivory"]
    assert nothing < news < named < for_sale < with_photo


def test_the_vectorised_rule_that_calibration_uses_is_the_rule_that_decides():
    rng = np.random.default_rng(0)
    points = {"ivory": OperatingPoint(review=0.4, block=0.8), "horn": OperatingPoint(review=0.3, block=0.9)}
    labels = ["ivory", "horn", "other"]
    probabilities = rng.dirichlet(np.ones(3), size=500)
    flagged, blocked = flags(probabilities, labels, points)
    decisions = [decide(dict(zip(labels, row)), points) for row in probabilities]
    assert flagged.tolist() == [decision != "allow" for decision in decisions]
    assert blocked.tolist() == [decision == "block" for decision in decisions]
    assert 0 < blocked.sum() < flagged.sum() < len(decisions)  # every branch of the rule is exercised


def test_a_lexicon_without_listing_weights_names_products_but_never_flags_on_words(tmp_path):
    own = tmp_path / "own.toml"
    own.write_text('version = "1"\n[labels.ivory]\ndescription = "x"\n[labels.ivory.terms]\nen = ["ivory"]\n')
    lexicon = Lexicon.load(own)
    assert decided(lexicon, title="ivory, $300").decision == "allow"
    own.write_text(own.read_text() + "[listing]\nintercept = -1\n")
    with pytest.raises(LexiconError, match="every weight"):
        Lexicon.load(own)


# The Python API.

def test_a_listing_with_no_photo_is_decided_on_its_words(classifier):
    listing = classifier.predict_listing(title="Netsuke, old elephant ivory", description="£450 or best offer")
    assert (listing.decision, listing.labels, listing.deciding_photo, listing.photos) == ("review", ("ivory",), None,
                                                                                         ())
    with pytest.raises(ValueError, match="at least one photo, or a title or description"):
        classifier.predict_listing([])
    with pytest.raises(TypeError, match="title must be text"):
        classifier.predict_listing(title=42)  # type: ignore[arg-type]


def test_predict_listing_weighs_the_photos_and_the_words_together(classifier):
    photos = [make_photo("not_ivory", 1, size=(320, 240)), make_photo("not_ivory", 2, size=(320, 240))]
    plain = classifier.predict_listing(photos)
    worded = classifier.predict_listing(photos, title="Rhino horn cup, Qing, DM for price")
    assert worded.labels == (*plain.labels, "rhino_horn") and worded.decision in ("review", "block")
    assert [p.scores for p in worded.photos] == [p.scores for p in plain.photos]
    title = [reason.to_dict() for reason in worded.reasons if reason.source == "title"]
    assert title == [
        {"source": "title", "label": "rhino_horn", "signal": "product", "phrase": "rhino horn", "score": None},
        {"source": "title", "label": None, "signal": "sale", "phrase": "dm", "score": None},
        {"source": "title", "label": None, "signal": "sale", "phrase": "price", "score": None}]


# scan --listings.

def test_scan_reads_the_listings_title_and_description_columns(shipped_model, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    for name, seed in (("a.jpg", 1), ("b.jpg", 2), ("c.jpg", 3)):
        make_photo("not_ivory", seed, size=(320, 240)).save(folder / name, quality=90)
    (tmp_path / "listings.csv").write_text(
        "path,listing,title,description\n"
        "a.jpg,L1,Ivory bangle for sale,\n"
        "b.jpg,L1,,Genuine elephant ivory. Shipping worldwide\n"
        "c.jpg,L2,Blue ceramic bowl,\n"
        ",L3,Carved mammoth ivory netsuke $900,\n", encoding="utf-8")
    output = tmp_path / "records.jsonl"
    assert main(["--model", str(shipped_model), "scan", str(folder), "-o", str(output),
                 "--listings", str(tmp_path / "listings.csv")]) == 0
    listings = {row["listing"]: row for row in map(json.loads, (tmp_path / "records.listings.jsonl").open())}
    assert listings["L1"]["labels"] == ["ivory"] and listings["L1"]["decision"] in ("review", "block")
    assert listings["L1"]["paths"] == ["a.jpg", "b.jpg"] and listings["L1"]["photos"] == 2
    assert {(r["source"], r["signal"]) for r in listings["L1"]["reasons"]} >= {("title", "product"),
                                                                              ("description", "sale")}
    assert listings["L2"]["decision"] == "allow"
    assert (listings["L3"]["decision"], listings["L3"]["photos"], listings["L3"]["deciding_path"]) == ("review", 0,
                                                                                                        None)


def test_a_listings_csv_whose_paths_match_no_scanned_photo_is_an_error(shipped_model, tmp_path, capsys):
    (tmp_path / "photos").mkdir()
    make_photo("not_ivory", 1).save(tmp_path / "photos" / "a.jpg")
    (tmp_path / "listings.csv").write_text("path,listing\nphotos/a.jpg,L1\n")
    assert main(["--model", str(shipped_model), "scan", str(tmp_path / "photos"), "-o", str(tmp_path / "r.jsonl"),
                 "--listings", str(tmp_path / "listings.csv")]) == 2
    err = capsys.readouterr().err
    assert "no path of the listings CSV is among the scanned photos" in err and "relative to the scanned folder" in err
    assert (tmp_path / "r.jsonl").exists()  # the photo records are kept: only the listings could not be made
    assert not (tmp_path / "r.listings.jsonl").exists()


def test_a_listing_whose_rows_disagree_on_its_title_is_refused_before_scanning(shipped_model, tmp_path, capsys):
    (tmp_path / "photos").mkdir()
    (tmp_path / "listings.csv").write_text("path,listing,title\na.jpg,L1,Ivory bangle\nb.jpg,L1,Bone bangle\n")
    assert main(["--model", str(shipped_model), "scan", str(tmp_path / "photos"), "-o", str(tmp_path / "r.jsonl"),
                 "--listings", str(tmp_path / "listings.csv")]) == 2
    assert "line 3: the listing's title differs" in capsys.readouterr().err
    assert not (tmp_path / "r.jsonl").exists()


# The service and the client.

def test_the_service_and_the_client_take_a_listings_title_and_description(classifier):
    pytest.importorskip("httpx", reason="service tests need the [test] extra")
    pytest.importorskip("uvicorn", reason="service tests need the [serve] extra")
    import httpx
    from test_service import running

    from wildvision import Client
    from wildvision.service import create_app

    photos = [make_photo("not_ivory", 5, size=(320, 240))]
    words = {"title": "Carved ivory figure", "description": "Pre-1947, £650 plus shipping"}
    with running(create_app(classifier)) as url, Client(url) as client:
        remote = client.predict_listing(photos, **words)
        local = classifier.predict_listing(photos, **words)
        assert remote == local and remote.labels == ("ivory",)
        assert client.predict_listing(title="Rhino horn libation cup, DM").labels == ("rhino_horn",)
        assert client.predict_listing(photos) == classifier.predict_listing(photos)  # no words: the photos decide
        strict = {"ivory": OperatingPoint(review=0.001, block=0.002)}  # a platform's own thresholds, for one call
        assert client.predict_listing(photos, **words, operating_points=strict) == classifier.predict_listing(
            photos, **words, operating_points=strict)
        assert client.predict_listing(photos, **words, operating_points=strict).decision == "block"

        answer = httpx.post(f"{url}/predict/listing", json={"title": "Elfenbein Netsuke, Preis 300 €"}).json()
        assert answer["labels"] == ["ivory"] and answer["reasons"][0]["source"] == "title"
        refused = httpx.post(f"{url}/predict/listing", json={"title": 3})
        assert refused.status_code == 400 and "title and description (text)" in refused.json()["detail"]["error"]
        empty = httpx.post(f"{url}/predict/listing", json={"photos": []})
        assert empty.status_code == 400 and "no photo, title or description" in empty.json()["detail"]["error"]
        batch = httpx.post(f"{url}/predict/batch", files={"photos": ("a", b"x")}, data={"title": "ivory"})
        assert batch.status_code == 400 and "/predict/listing" in batch.json()["detail"]["error"]
