"""Text evidence: the lexicon names products in what sellers write and nothing in harmless text that looks alike;
words rendered onto real photos are read and weighed with the image model's scores; listings are decided by their
worst photo; and a missing extra or a bad lexicon is one clear line."""

from __future__ import annotations

import csv
import json
import pickle
import sys

import numpy as np
import pytest
from PIL import Image

from captions import caption, phrases, skip_without_font
from conftest import EVERYDAY_DATA, SHARED_DATA, make_photo
from wildvision import Classifier, OperatingPoint
from wildvision.classifier import Prediction
from wildvision.decision import decide_listing, decide_with_text, decided_label
from wildvision.cli import main
from wildvision.text import Lexicon, LexiconError, TextEvidence, TextLine, TextMatch, TextReader

POSITIVE, NEGATIVE = phrases()
IVORY = {"ivory": OperatingPoint(review=0.5, block=0.9)}


def line(text: str) -> TextLine:
    return TextLine(text, (0, 0, 10, 10), 1.0)


@pytest.fixture(scope="module")
def lexicon() -> Lexicon:
    return Lexicon.load()


# The lexicon alone: what sellers write, and harmless text with the same words in it.

@pytest.mark.parametrize("phrase", POSITIVE, ids=lambda p: f"{p.language}:{p.text}")
def test_a_product_named_by_a_seller_is_found_with_its_label(lexicon, phrase):
    assert {match.label for match in lexicon.find([line(phrase.text)])} == {phrase.label}


@pytest.mark.parametrize("phrase", NEGATIVE, ids=lambda p: f"{p.language}:{p.text}")
def test_a_colour_brand_place_or_dish_names_nothing(lexicon, phrase):
    assert lexicon.find([line(phrase.text)]) == ()


@pytest.mark.parametrize("run_on", ["Braceletivoiredemammouth-120", "Cornederhinocerosancienne,800g"])
def test_a_line_whose_spaces_ocr_lost_still_names_its_product(lexicon, run_on):
    assert lexicon.find([line(run_on)]) != ()


def test_a_shop_name_of_one_short_word_is_no_product(lexicon):
    assert lexicon.find([line("IvoryAndArt Bronzes")]) == ()


@pytest.mark.parametrize("run_on", ["Color:Ivory / Size:M", "Hawksbill turtleplushtoy30cm", "CacaodeCote d°Ivoire,1kg",
                                    "Haifischflossen-AntennefursAuto", "Antena aletadetiburonpara coche"])
def test_an_ignored_context_whose_spaces_ocr_lost_still_cancels(lexicon, run_on):
    assert lexicon.find([line(run_on)]) == ()


def test_the_lexicon_covers_every_product_of_the_mission_in_every_language_of_the_trade(lexicon):
    assert set(lexicon.labels) >= {"ivory", "rhino_horn", "pangolin_scales", "tiger_parts", "shark_fin",
                                   "tortoiseshell", "bear_parts"}
    assert set(lexicon.languages) >= {"en", "fr", "de", "es", "pt", "zh-Hans", "zh-Hant", "ja", "vi", "th", "id", "ms"}


def test_a_match_reports_phrase_language_line_and_box(lexicon):
    found = lexicon.find([TextLine("Antique MAMMOTH-ivory netsuke", (5, 6, 50, 20), 0.9)])
    assert [(m.label, m.phrase, m.language, m.text, m.box) for m in found] == [
        ("ivory", "mammoth ivory", "en", "Antique MAMMOTH-ivory netsuke", (5, 6, 50, 20))]


@pytest.mark.parametrize(("document", "complaint"), [
    ({"labels": {"ivory": {"description": "x", "terms": {"en": ["ivory"]}}}}, "version"),
    ({"version": "1", "labels": {"ivory": {"description": "x", "terms": {"xx": ["ivory"]}}}}, "unknown language"),
    ({"version": "1", "labels": {"ivory": {"description": "x", "terms": {"en": ["", "ivory"]}}}}, "non-empty strings"),
    ({"version": "1", "labels": {"ivory": {"description": "x", "terms": {}}}}, "language = \\[phrases\\]"),
    ({"version": "1", "labels": {"Ivory!": {"description": "x", "terms": {"en": ["ivory"]}}}}, "lower-case"),
    ({"version": "1", "labels": {"ivory": {"description": "x", "terms": {"en": ["ivory"]}, "colour": 1}}},
     "unknown key"),
    ({"version": "1", "lables": {}}, "unknown key"),
])
def test_a_bad_lexicon_is_refused_with_its_fault_named(document, complaint):
    with pytest.raises(LexiconError, match=complaint):
        Lexicon(document, name="mine.toml")


def test_a_lexicon_is_one_value_however_often_it_is_loaded_or_shipped(lexicon):
    assert pickle.loads(pickle.dumps(lexicon)) == lexicon == Lexicon.load()
    assert hash(pickle.loads(pickle.dumps(lexicon))) == hash(lexicon)


# The decision rule.

def evidence(*labels: str) -> TextEvidence:
    return TextEvidence("test", (), tuple(TextMatch(label, label, "en", label, (0, 0, 1, 1)) for label in labels))


@pytest.mark.parametrize(("ivory_score", "image_decision", "named", "decision"), [
    (0.1, "allow", ("ivory",), "review"),  # named, the image disagrees: review
    (0.6, "review", ("ivory",), "block"),  # named, and the image agrees: block
    (0.1, "allow", ("rhino_horn",), "review"),  # a product the image model does not know: review on text alone
    (0.95, "block", (), "block"),  # no text: the image decides
    (0.95, "block", ("rhino_horn",), "block"),  # text never lowers a decision
    (0.1, "allow", (), "allow"),
])
def test_text_sends_to_review_and_blocks_only_where_the_image_agrees(ivory_score, image_decision, named, decision):
    scores = {"ivory": ivory_score, "not_ivory": 1 - ivory_score}
    assert decide_with_text(scores, image_decision, evidence(*named), IVORY) == decision


def prediction(ivory: float, decision: str, text: TextEvidence | None = None) -> Prediction:
    scores = {"ivory": ivory, "not_ivory": 1 - ivory}
    return Prediction(scores, decided_label(scores, decision, text.labels if text else (), IVORY),
                      max(scores, key=scores.get), decision, "m", "1", "float32", "sha256:0", "ivory=0.5/0.9", text)


def test_a_listing_is_decided_by_its_worst_photo_by_image_or_by_words():
    plain, promo = prediction(0.2, "allow"), prediction(0.1, "review", evidence("rhino_horn"))
    listing = decide_listing([plain, promo, prediction(0.3, "allow")], IVORY)
    assert (listing.decision, listing.deciding_photo, listing.labels) == ("review", 1, ("rhino_horn",))
    blocked = decide_listing([promo, prediction(0.95, "block")], IVORY)
    assert (blocked.decision, blocked.deciding_photo, blocked.labels) == ("block", 1, ("rhino_horn", "ivory"))


# Reading words rendered onto photos (real shared photos where present), through the shipped model.

def background(index: int) -> Image.Image:
    """A real everyday photo (the open world: harmless), else a generated one."""
    manifest = EVERYDAY_DATA / "manifest.csv"
    if manifest.is_file():
        rows = [row for row in csv.DictReader(manifest.open(encoding="utf-8")) if row["split"] == "val"]
        return Image.open(EVERYDAY_DATA / rows[index * 37 % len(rows)]["path"]).convert("RGB")
    return make_photo("not_ivory", index, size=(480, 360))


def written(text: str, language: str, index: int = 0) -> Image.Image:
    skip_without_font(language)
    return caption(background(index), text, language, seed=index)[0]


@pytest.fixture(scope="module")
def reader_classifier(shipped_model) -> Classifier:
    pytest.importorskip("rapidocr_onnxruntime", reason="reading text needs the text extra")
    return Classifier(shipped_model, read_text=True, threads=1)


@pytest.mark.parametrize(("text", "language", "label"), [
    ("Mammoth Ivory Netsuke - Now $950", "en", "ivory"),
    ("Marfil antiguo tallado, 300 g", "es", "ivory"),
    ("猛犸象牙手镯 特价", "zh-Hans", "ivory"),
    ("天然犀牛角杯 收藏", "zh-Hans", "rhino_horn"),
    ("正宗穿山甲片 500克", "zh-Hant", "pangolin_scales"),
    ("本象牙 印鑑 実印", "ja", "ivory"),
    ("Sisik trenggiling asli 1kg", "id", "pangolin_scales"),
])
def test_a_product_written_on_a_photo_is_read_and_sends_it_to_review(reader_classifier, text, language, label):
    result = reader_classifier.predict(written(text, language, index=len(text)))
    assert result.text is not None and label in result.text.labels
    assert result.decision in ("review", "block")


def test_a_product_the_image_model_does_not_know_reaches_review_with_its_label(reader_classifier):
    result = reader_classifier.predict(written("Genuine rhino horn cup, 250g", "en", index=3))
    assert "rhino_horn" not in result.scores  # the image model has no such label
    assert result.decision == "review"
    assert [match.label for match in result.text.matches] == ["rhino_horn"]


@pytest.mark.parametrize(("text", "language"), [
    ("Ivory lace wedding dress, size 8", "en"),
    ("Café de Côte d'Ivoire 250 g", "fr"),
    ("象牙白 羊毛围巾", "zh-Hans"),
])
def test_a_colour_brand_or_place_on_a_photo_changes_nothing(reader_classifier, text, language):
    photo = written(text, language, index=5)
    result = reader_classifier.predict(photo)
    assert result.text.lines, "the words were read"
    assert result.text.matches == ()
    assert result.decision == Classifier(reader_classifier.model_path).predict(photo).decision


def test_every_line_read_is_in_the_answer_with_its_box_on_the_photo(reader_classifier):
    skip_without_font("en")
    photo, box = caption(background(1), "Mammoth Ivory Netsuke", "en", seed=2)
    result = reader_classifier.predict(photo)
    (match,) = result.text.matches
    left, top, right, bottom = match.box
    assert left < box[2] and box[0] < right and top < box[3] and box[1] < bottom  # where it was written
    assert match.text in [text_line.text for text_line in result.text.lines]
    assert result.to_dict()["text"]["matches"][0]["label"] == "ivory"


def test_a_listing_is_decided_by_the_photo_that_names_the_product(reader_classifier):
    listing = reader_classifier.predict_listing([background(2), written("Mammoth Ivory Netsuke", "en", 4)])
    assert (listing.decision, listing.deciding_photo) == ("review", 1)
    assert listing.labels == ("ivory",) and len(listing.photos) == 2


def test_the_explanation_frames_the_words_that_counted(reader_classifier):
    photo = written("Mammoth Ivory Netsuke", "en", 6)
    explanation = reader_classifier.explain(photo)
    (match,) = explanation.text.matches
    left, top, _, _ = match.box
    framed = np.asarray(explanation.overlay())[top + 1, left + 8]
    assert tuple(framed) == (0, 255, 255)  # the word frame's colour, outside the heat map's ramp
    assert tuple(np.asarray(Classifier(reader_classifier.model_path).explain(photo).overlay())[top + 1, left + 8]) \
        != (0, 255, 255)


def test_the_reader_is_safe_to_share_between_threads():
    pytest.importorskip("rapidocr_onnxruntime", reason="reading text needs the text extra")
    from concurrent.futures import ThreadPoolExecutor

    reader, photo = TextReader(threads=1, engines=2), written("Mammoth Ivory Netsuke", "en", 7)
    alone = reader.read(photo)
    with ThreadPoolExecutor(4) as pool:
        assert list(pool.map(lambda _: reader.read(photo), range(8))) == [alone] * 8


# The command line.

def test_scan_reads_text_and_writes_one_record_per_listing(shipped_model, tmp_path, capsys):
    pytest.importorskip("rapidocr_onnxruntime", reason="reading text needs the text extra")
    folder = tmp_path / "photos"
    for listing, photos in {"L1": [background(8), written("Mammoth Ivory Netsuke", "en", 9)],
                            "L2": [background(10)]}.items():
        (folder / listing).mkdir(parents=True)
        for number, photo in enumerate(photos):
            photo.save(folder / listing / f"{number}.jpg", quality=95)
    output = tmp_path / "records.csv"
    common = ["--model", str(shipped_model), "scan", str(folder), "-o", str(output)]
    assert main([*common, "--read-text", "--listing-folders"]) == 0
    rows = {row["path"]: row for row in csv.DictReader(output.open(encoding="utf-8"))}
    assert rows["L1/1.jpg"]["text_labels"] == "ivory" and rows["L1/1.jpg"]["decision"] in ("review", "block")
    assert json.loads(rows["L1/1.jpg"]["text_evidence"])["matches"][0]["phrase"] == "mammoth ivory"
    listings = {row["listing"]: row for row in map(json.loads, (tmp_path / "records.listings.jsonl").open())}
    assert listings["L1"]["deciding_path"] == "L1/1.jpg" and listings["L1"]["labels"] == ["ivory"]
    assert listings["L2"]["decision"] == "allow" and listings["L2"]["photos"] == 1
    capsys.readouterr()
    assert main(common) == 2  # the same output continued without reading text would mix two kinds of records
    assert "--read-text" in capsys.readouterr().err


def test_a_listings_csv_without_its_columns_is_refused_before_scanning(shipped_model, tmp_path, capsys):
    (tmp_path / "photos").mkdir()
    background(0).save(tmp_path / "photos" / "a.jpg")
    (tmp_path / "listings.csv").write_text("file,id\na.jpg,1\n")
    assert main(["--model", str(shipped_model), "scan", str(tmp_path / "photos"), "-o", str(tmp_path / "r.jsonl"),
                 "--listings", str(tmp_path / "listings.csv")]) == 2
    assert "'path' and 'listing' columns" in capsys.readouterr().err
    assert not (tmp_path / "r.jsonl").exists()


def test_without_the_text_extra_reading_text_names_the_extra(shipped_model, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "rapidocr_onnxruntime", None)  # as if it were not installed
    with pytest.raises(ImportError, match=r'pip install "wildvision\[text\]"'):
        Classifier(shipped_model, read_text=True)
    photo = SHARED_DATA / "manifest.csv"  # any path: the command stops before reading photos
    assert main(["--model", str(shipped_model), "predict", str(photo), "--read-text"]) == 2
    assert 'pip install "wildvision[text]"' in capsys.readouterr().err


def test_a_bad_lexicon_file_is_one_line_for_every_command(shipped_model, tmp_path, capsys):
    bad = tmp_path / "mine.toml"
    bad.write_text('version = "1"\n[labels.ivory]\ndescription = "x"\n[labels.ivory.terms]\nklingon = ["x"]\n')
    for command in (["info"], ["predict", "x.jpg"], ["scan", str(tmp_path), "-o", str(tmp_path / "r.jsonl")]):
        assert main(["--model", str(shipped_model), *command, "--lexicon", str(bad)]) == 2
        assert "unknown language 'klingon'" in capsys.readouterr().err


def test_info_lists_the_lexicons_labels_and_languages(shipped_model, capsys):
    assert main(["--model", str(shipped_model), "info"]) == 0
    out = capsys.readouterr().out
    assert "rhino_horn" in out and "pangolin_scales" in out and "zh-Hant" in out and "vi" in out
