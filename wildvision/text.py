"""Text evidence: read the words a seller wrote on a photo and find the prohibited products they name.

Sellers caption their photos ("Mammoth Ivory Netsuke · Now $950"), and a promotional graphic that the image model
calls harmless often names the product outright. This module has the two halves of reading that evidence:

- `TextReader` finds and reads lines of text with PP-OCRv4 (detection and recognition, Chinese and English, run by
  onnxruntime from the `rapidocr-onnxruntime` wheel, which ships the models: nothing is downloaded).
- `Lexicon` decides which lines name a product: phrases per label and language from a TOML file (the package's own
  `lexicon.toml`, or a platform's), with the contexts that do not count ("ivory white", Côte d'Ivoire, a list of
  colours). It also holds what a listing's own words are weighed by (`wildvision.words`): sale cues, prices, and the
  words of news and advocacy, which name a product without selling it.

`wildvision.decision` combines the words with the image model's scores (see `decide_with_text`).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
import queue
import re
import threading
import tomllib
import unicodedata
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from PIL import Image

from wildvision.errors import WildvisionError

__all__ = [
    "DETECT_SIDE", "LANGUAGES", "MAX_LINES", "READ_SIDE", "Lexicon", "LexiconError", "ListingWeights", "TextEvidence",
    "TextLine", "TextMatch", "TextReader", "default_lexicon_path",
]

# The languages of the trade a lexicon may name (BCP 47 tags). PP-OCRv4's bundled recogniser reads Chinese and
# Latin letters; accents are often dropped, hence matching folds them (`_normalise`).
LANGUAGES = ("en", "fr", "de", "es", "pt", "zh-Hans", "zh-Hant", "ja", "vi", "th", "id", "ms")
# Text is found on a copy of the photo whose longer side is this many pixels: detection cost grows with pixels (640
# costs twice 480 and 320 half of it), captions worth reading stay legible at this size (on 57 captioned val photos 640
# found the product on 47, 480 on 46, 320 on 43), and a small photo's text is enlarged to where PP-OCR finds it.
# Recognition then reads each line from the photo itself.
DETECT_SIDE = 480
# Photos whose text is read are decoded with at least this short side (JPEGs are otherwise reduced to the model's
# 288 pixels), so that recognition reads lines from more pixels than detection needs.
READ_SIDE = 480
# Lines shorter than this many pixels (at detection scale) are neither legible nor written for a buyer to read.
_MIN_LINE_HEIGHT = 8
# At most this many lines are recognised per photo, the tallest first: a seller's caption is large, and packaging or
# a page of small print would otherwise cost a recognition pass per line.
MAX_LINES = 12
_MIN_CONFIDENCE = 0.5  # recognitions below this are mostly noise (PP-OCR's own default)


def default_lexicon_path() -> Path:
    return Path(str(resources.files("wildvision") / "lexicon.toml"))


class LexiconError(WildvisionError, ValueError):
    """A lexicon file that is not valid: unreadable TOML, unknown keys or languages, empty or non-text phrases."""


@dataclass(frozen=True)
class TextLine:
    """One line of text read on a photo, with its box (left, top, right, bottom) in the photo's pixels."""

    text: str
    box: tuple[int, int, int, int]
    confidence: float


@dataclass(frozen=True)
class TextMatch:
    """A phrase of the lexicon found in a line read on the photo: the label it names, in which language."""

    label: str
    phrase: str
    language: str
    text: str  # the whole line it was found in, as read
    box: tuple[int, int, int, int]


@dataclass(frozen=True)
class TextEvidence:
    """What was read on a photo (every line) and what counted (the matches), and which lexicon judged it."""

    lexicon: str  # `Lexicon.identity`: which phrase list decided
    lines: tuple[TextLine, ...]
    matches: tuple[TextMatch, ...]

    @property
    def labels(self) -> tuple[str, ...]:
        """The labels the text names, each once, in the order first found."""
        return tuple(dict.fromkeys(match.label for match in self.matches))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, value: Mapping[str, Any]) -> TextEvidence:
        return cls(value["lexicon"], tuple(TextLine(line["text"], tuple(line["box"]), line["confidence"])
                                           for line in value["lines"]),
                   tuple(TextMatch(**{**match, "box": tuple(match["box"])}) for match in value["matches"]))


@dataclass(frozen=True)
class ListingWeights:
    """How a listing's words weigh in its fused score (`wildvision.decision.listing_score`): log-odds of a logistic
    model over the words' state, fitted on the fitting part of a development set (`benchmarks/listing_words.py`), and
    the score at which a listing goes to review."""

    intercept: float  # nothing named
    for_sale: float  # a product named with a sale cue (a price, "for sale", "DM")
    named: float  # a product named, with neither a sale cue nor a reporting word
    reported: float  # a product named among the words of news, law or advocacy, and no sale cue
    mixed: float  # a product named with both a sale cue and a reporting word ("pre-ban ivory for sale")
    review: float  # the fused score from which a listing goes at least to review


@dataclass(frozen=True)
class _Phrase:
    label: str
    language: str
    text: str  # normalised (`_normalise`)
    spelled: str = ""  # for a run-on form (`run_on`): the phrase as the lexicon spells it

    @property
    def spaced(self) -> bool:
        """Written in a script that separates words with spaces (Latin letters, with or without accents)."""
        return all(char < "ɏ" or unicodedata.category(char).startswith("M") for char in self.text)

    @property
    def bounded(self) -> bool:
        """Matched at word edges only: in a script with spaces, and not inside a run-on token."""
        return self.spaced and not self.spelled

    @property
    def run_on(self) -> _Phrase:
        """The phrase as it stands in a run-on token, its spaces lost."""
        return _Phrase(self.label, self.language, self.text.replace(" ", ""), self.text)


class Lexicon:
    """Phrases per label and language that name a prohibited product, and phrases that contain one but do not.

    A phrase matches a line of text after both are normalised (`_normalise`: NFKC, case-folded, punctuation and white
    space as one space, accents of Latin letters removed): in scripts written with spaces at word edges only
    ("IvoryAndArt" does not name ivory) and also inside run-on words whose spaces OCR lost (`_RUN_ON`); in Chinese,
    Japanese and Thai anywhere. A match is cancelled when an `ignore` phrase of the same label covers it ("ivory
    white", "Côte d'Ivoire"), spaces or none. Immutable once loaded, so one lexicon serves every thread.
    """

    def __init__(self, document: Mapping[str, Any], *, name: str) -> None:
        self.version, self.labels, phrases, ignored, lookalike = _parse(document, name)
        self.languages = tuple(language for language in LANGUAGES if any(p.language == language for p in phrases))
        canonical = repr(sorted((k, repr(v)) for k, v in document.items())).encode()
        self.identity = f"{name} {self.version} sha256:{hashlib.sha256(canonical).hexdigest()[:12]}"
        self._words = _Alternation(phrases)
        self._run_ons = _Alternation([p.run_on for p in phrases if p.spaced])
        self._ignored = {label: _Alternation([p.run_on for p in ignored if p.label == label]) for label in self.labels}
        self._lookalike = {label: _Alternation([p for p in lookalike if p.label == label]) for label in self.labels}
        sale, self._price, reporting, colours, joiners, self.weights = _parse_listing_tables(document, name)
        self._sale, self._reporting = _Alternation(sale), _Alternation(reporting)
        self._colours = frozenset(phrase.text for phrase in colours)
        self._joiners = _Alternation(joiners).regex

    @classmethod
    def load(cls, path: str | os.PathLike[str] | None = None) -> Lexicon:
        """The lexicon in `path` (TOML; see the package's `lexicon.toml`), by default the package's own."""
        file = Path(path) if path is not None else default_lexicon_path()
        try:
            document = tomllib.loads(file.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise  # the command line's own one-line message for a missing file
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as error:
            raise LexiconError(f"{file}: not a readable TOML lexicon ({error})") from None
        return cls(document, name="wildvision" if path is None else file.name)

    def __eq__(self, other: object) -> bool:  # one lexicon, however often loaded or shipped to a Spark executor
        return isinstance(other, Lexicon) and other.identity == self.identity

    def __hash__(self) -> int:
        return hash(self.identity)

    def find(self, lines: Sequence[TextLine]) -> tuple[TextMatch, ...]:
        """Every phrase that names a product in `lines`, the longest at each place, minus ignored contexts."""
        return tuple(TextMatch(label, phrase, language, line.text, line.box)
                     for line in lines for label, phrase, language in self.products(line.text))

    def products(self, text: str) -> list[tuple[str, str, str]]:
        """The products one line of text names, as (label, phrase as the lexicon spells it, language): the longest
        phrase at each place, minus ignored contexts, items of a list of colours ("Peach, Blush, Ivory") and phrases
        with a label's look-alike word close by ("IVORY WICKER HEART", "Shark-Fin-Antenne"). A hashtag is judged on
        its own, as a run-on word ("#gadinggajah")."""
        found = []
        for part in _HASHTAG.split(text):
            normalised = _normalise(part)
            found += [(phrase.label, phrase.spelled or phrase.text, phrase.language)
                      for phrase, start, end in self._found(normalised, part.startswith("#"))
                      if not self._lookalike[phrase.label].regex.search(_near(normalised, start, end, phrase))]
        return [named for named in found if not self._in_colour_list(named[1], text)]

    def cues(self, text: str) -> tuple[list[str], list[str]]:
        """What in `text` says whether a product it names is offered: its sale cues (sale words such as "for sale",
        "DM", 出售, and prices such as "$950", "3000元"), and its words of news, law or advocacy ("seized", "poaching"),
        which report on the trade. A reporting word inside a sale phrase does not count ("cần bán" is no "ban")."""
        normalised = _normalise(text)
        sale = list(self._sale.regex.finditer(normalised))
        spans = [found.span() for found in sale]
        reporting = [self._reporting.phrase_of(found).text for found in self._reporting.regex.finditer(normalised)
                     if not _overlaps(found.span(), spans)]
        prices = [found.group().strip() for found in self._price.finditer(unicodedata.normalize("NFKC", text))]
        return [self._sale.phrase_of(found).text for found in sale] + prices, reporting

    def _found(self, text: str, hashtag: bool = False) -> list[tuple[_Phrase, int, int]]:
        """The phrases named in one normalised line: as words, and where OCR lost the spaces between words, with the
        spaces gone, touching a run-on word (`_RUN_ON`, or the line's first word when it is a hashtag). A place judged
        as words is not judged again."""
        squashed = text.replace(" ", "")
        kept = [position for position, char in enumerate(text) if char != " "]  # squashed position -> text position
        found = [(self._words.phrase_of(match), match.start(), match.end())
                 for match in self._words.regex.finditer(text)]
        run_ons = [token.span() for token in _RUN_ON.finditer(text)]
        if hashtag and (first := _FIRST_WORD.match(text)):
            run_ons.append(first.span())
        for match in self._run_ons.regex.finditer(squashed):
            start, end = kept[match.start()], kept[match.end() - 1] + 1
            if _overlaps((start, end), run_ons) and not _overlaps((start, end), [(a, b) for _, a, b in found]):
                found.append((self._run_ons.phrase_of(match), start, end))
        # An ignored context is looked for with the spaces gone, so that "Color:Ivory" or "turtleplushtoy" (spaces
        # that OCR lost) still cancel what they contain.
        return [(phrase, start, end) for phrase, start, end in found
                if not self._ignored[phrase.label].covers(squashed, (kept.index(start), kept.index(end - 1) + 1))]

    def _in_colour_list(self, phrase: str, text: str) -> bool:
        """Whether `phrase` stands alone as an item of a list in `text` (split at commas, slashes and "or"/"and")
        beside a colour word: "Peach, Blush, Ivory, Champagne" lists colours, "Netsuke, ivory, 19th century" does not."""
        if not _LIST_SEPARATORS.search(text):
            return False
        items = [item.strip().split(" ") for part in _LIST_SEPARATORS.split(text)
                 for item in self._joiners.split(_normalise(part))]
        words = phrase.split(" ")
        # The phrase's own item may carry a colour's finish ("elfenbein matt"); another item must be colour words
        # only ("gris perle", "coloris noir").
        own = [item for item in items if item[: len(words)] == words and set(item[len(words):]) <= self._colours]
        return bool(own) and any(set(item) <= self._colours for item in items if item and item not in own)


class TextReader:
    """Reads the lines of text on a photo: PP-OCRv4 detection on a reduced copy, then recognition of the tallest
    lines from the photo itself. Needs `pip install "wildvision[text]"`.

    Safe to share across threads: each call borrows one of at most `engines` OCR engines (rapidocr's detector keeps
    per-call state, so an engine serves one thread at a time), each running onnxruntime on `threads` threads.
    """

    def __init__(self, *, threads: int | None = None, engines: int = 2) -> None:
        if engines < 1:
            raise ValueError(f"engines must be at least 1, got {engines}")
        self._new_engine = _engine_factory(threads)
        self._idle: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._idle.put(self._new_engine())  # the first engine now: a broken install fails at load, not mid-scan
        self._created, self._limit, self._lock = 1, engines, threading.Lock()

    def read(self, photo: Image.Image) -> tuple[TextLine, ...]:
        """The lines of text on an RGB photo, top to bottom, each with its box in the photo's pixels."""
        engine = self._borrow()
        try:
            return _read(engine, photo)
        finally:
            self._idle.put(engine)

    def _borrow(self) -> Any:
        try:
            return self._idle.get_nowait()
        except queue.Empty:
            with self._lock:
                create = self._created < self._limit
                self._created += create
            return self._new_engine() if create else self._idle.get()


def _engine_factory(threads: int | None):
    try:
        from rapidocr_onnxruntime import RapidOCR
    except ImportError:
        raise ImportError('reading text needs the text extra: pip install "wildvision[text]"') from None
    count = -1 if threads is None else threads  # rapidocr's "all cores"

    def new_engine() -> Any:
        # "max": no resizing of its own (rapidocr's default enlarges every photo to a 736-pixel short side, 6x the
        # cost); `_read` hands it a copy already sized to DETECT_SIDE.
        return RapidOCR(intra_op_num_threads=count, inter_op_num_threads=1, det_limit_type="max",
                        det_limit_side_len=DETECT_SIDE)

    return new_engine


def _read(engine: Any, photo: Image.Image) -> tuple[TextLine, ...]:
    scale = DETECT_SIDE / max(photo.size)  # small photos are enlarged: PP-OCR misses text under about 10 pixels
    small = photo if scale == 1.0 else photo.resize(
        (max(1, round(photo.width * scale)), max(1, round(photo.height * scale))), Image.Resampling.BILINEAR)
    quads, _ = engine.text_det(_bgr(small))
    if quads is None or len(quads) == 0:
        return ()
    heights = np.linalg.norm(quads[:, 3] - quads[:, 0], axis=1)
    tallest = [i for i in np.argsort(-heights)[:MAX_LINES] if heights[i] >= _MIN_LINE_HEIGHT]
    chosen = engine.sorted_boxes(quads[sorted(tallest)] / scale) if tallest else []
    if not chosen:
        return ()
    crops = engine.get_crop_img_list(_bgr(photo), [quad.astype(np.float32) for quad in chosen])
    texts, _ = engine.text_rec(crops)
    return tuple(TextLine(text.strip(), _bounds(quad, photo.size), round(float(confidence), 4))
                 for quad, (text, confidence) in zip(chosen, texts)
                 if confidence >= _MIN_CONFIDENCE and text.strip())


def _bgr(photo: Image.Image) -> np.ndarray:
    """The photo as OpenCV's BGR array, which PP-OCR's models were trained on."""
    return np.ascontiguousarray(np.asarray(photo.convert("RGB"))[:, :, ::-1])


def _bounds(quad: np.ndarray, size: tuple[int, int]) -> tuple[int, int, int, int]:
    left, top = np.floor(quad.min(axis=0)).astype(int)
    right, bottom = np.ceil(quad.max(axis=0)).astype(int)
    return (max(0, int(left)), max(0, int(top)), min(size[0], int(right)), min(size[1], int(bottom)))


def _parse(
    document: Mapping[str, Any], name: str
) -> tuple[str, tuple[str, ...], list[_Phrase], list[_Phrase], list[_Phrase]]:
    """The lexicon's version, labels, and its phrases, ignored phrases and look-alike words, checked as strictly as
    operating points."""
    _only_keys(document, {"version", "labels", "sale", "reporting", "colours", "listing"}, name)
    version, labels = document.get("version"), document.get("labels")
    if not isinstance(version, str) or not version:
        raise LexiconError(f"{name}: 'version' must be a non-empty string")
    if not isinstance(labels, dict) or not labels:
        raise LexiconError(f"{name}: '[labels.<label>]' tables are missing")
    phrases, ignored, lookalike = [], [], []
    for label, table in labels.items():
        where = f"{name}: labels.{label}"
        if not re.fullmatch(r"[a-z][a-z0-9_]*", label):
            raise LexiconError(f"{where}: a label is lower-case letters, digits and '_'")
        if not isinstance(table, dict):
            raise LexiconError(f"{where}: must be a table with 'description', 'terms', 'ignore' and 'lookalike'")
        _only_keys(table, {"description", "terms", "ignore", "lookalike"}, where)
        if not isinstance(table.get("description"), str):
            raise LexiconError(f"{where}: 'description' must be a string")
        phrases += _phrases(label, table.get("terms"), f"{where}.terms", required=True)
        ignored += _phrases(label, table.get("ignore", {}), f"{where}.ignore", required=False)
        lookalike += _phrases(label, table.get("lookalike", {}), f"{where}.lookalike", required=False)
    return version, tuple(labels), phrases, ignored, lookalike


def _parse_listing_tables(
    document: Mapping[str, Any], name: str
) -> tuple[list[_Phrase], re.Pattern[str], list[_Phrase], list[_Phrase], list[_Phrase], ListingWeights]:
    """The tables a listing's words are weighed by: sale words and currencies, reporting words, colours and the words
    that join a list, and the fitted weights (`ListingWeights`)."""
    sale = _table(document, "sale", {"words", "currencies"}, name)
    currencies = sale.get("currencies", [])
    if not isinstance(currencies, list) or not all(isinstance(c, str) and c.strip() for c in currencies):
        raise LexiconError(f"{name}: sale.currencies must be a list of non-empty strings")
    colours = _table(document, "colours", {"words", "joiners"}, name)
    weights = [field.name for field in dataclasses.fields(ListingWeights)]
    listing = _table(document, "listing", set(weights), name)
    if listing and not all(isinstance(listing.get(w), (int, float)) for w in weights):
        raise LexiconError(f"{name}: listing needs every weight as a number: {', '.join(weights)}")
    return (_phrases("sale", sale.get("words", {}), f"{name}: sale.words", required=False), _price_regex(currencies),
            _phrases("reporting", document.get("reporting", {}), f"{name}: reporting", required=False),
            _phrases("colour", colours.get("words", {}), f"{name}: colours.words", required=False),
            _phrases("joiner", colours.get("joiners", {}), f"{name}: colours.joiners", required=False),
            ListingWeights(**{w: float(listing[w]) for w in weights}) if listing else _NO_WEIGHTS)


def _table(document: Mapping[str, Any], key: str, allowed: set[str], name: str) -> Mapping[str, Any]:
    """The optional table `key` of the lexicon, with no keys but `allowed` (an absent table is empty)."""
    table = document.get(key, {})
    if not isinstance(table, dict):
        raise LexiconError(f"{name}: '{key}' must be a table of {', '.join(sorted(allowed))}")
    _only_keys(table, allowed, f"{name}: {key}")
    return table


def _price_regex(currencies: Sequence[str]) -> re.Pattern[str]:
    """A price: a currency (symbol, code or word) next to a number, either side ("$950", "950 USD", "3.000.000đ")."""
    marks = sorted({unicodedata.normalize("NFKC", c).strip() for c in currencies}, key=len, reverse=True)
    if not marks:
        return re.compile("(?!)")
    # A currency in letters ("RM", "USD", "euros") must not be part of a longer word ("ARMY 50", "Rome 3").
    letters, symbols = [m for m in marks if m[-1].isalpha()], [m for m in marks if not m[-1].isalpha()]
    mark = "|".join(([rf"(?<![^\W\d_])(?:{_trie(letters)})(?![^\W\d_])"] if letters else [])
                    + ([_trie(symbols)] if symbols else []))
    number = r"\d+(?:[.,' ]\d+)*"  # 950, 1,200, 3.000.000, 12 000: groups, each tried once (no backtracking)
    return re.compile(rf"(?:{mark})\s?(?:{number})|(?:{number})\s?(?:{mark})", re.IGNORECASE)


def _phrases(label: str, table: Any, where: str, *, required: bool) -> list[_Phrase]:
    if not isinstance(table, dict) or (required and not table):
        raise LexiconError(f"{where}: must be a table of language = [phrases]")
    phrases = []
    for language, values in table.items():
        if language not in LANGUAGES:
            raise LexiconError(f"{where}: unknown language {language!r}; use one of {', '.join(LANGUAGES)}")
        if not isinstance(values, list) or not all(isinstance(v, str) and _normalise(v) for v in values):
            raise LexiconError(f"{where}.{language}: must be a list of non-empty strings")
        phrases += [_Phrase(label, language, _normalise(value)) for value in values]
    return phrases


def _only_keys(table: Mapping[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise LexiconError(f"{where}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(allowed))}")


# Without a `[listing]` table a lexicon names products but weighs no listing words (a platform's older lexicon).
_NO_WEIGHTS = ListingWeights(intercept=0.0, for_sale=0.0, named=0.0, reported=0.0, mixed=0.0, review=1.0)
# What separates the items of a list in a line of text: "blue, white, ivory", "Peach / Blush", "黑色、象牙色".
_LIST_SEPARATORS = re.compile(r"\s*[,/;|·、，；]\s*")
# A hashtag is a word of its own: "#Ivory #RoseBrooch" is not "ivory rose" (flowers, ignored), so a line is judged
# hashtag by hashtag.
_HASHTAG = re.compile(r"(?=#)")
_FIRST_WORD = re.compile(r"\w+")
_LOOKALIKE_WORDS = 3  # words either side of a phrase in a script with spaces
_LOOKALIKE_REACH_UNSPACED = 6  # characters either side in Chinese, Japanese and Thai
_SPACES = re.compile(r" +")
# PP-OCR often drops the spaces between Latin words ("Braceletivoiredemammouth"): in a token of at least this many
# letters, which few real words reach, a phrase is looked for inside the token too. Shorter tokens keep word edges, so
# a shop called "IvoryAndArt" (11 letters) names nothing on its own; joined to the next word by OCR it does.
_RUN_ON = re.compile(r"[^\W\d_]{12,}")


@functools.lru_cache(maxsize=4096)  # a listing's text is normalised by each of the lexicon's readers in turn
def _normalise(text: str) -> str:
    """Case-folded NFKC text, punctuation, symbols and white space as one space, Latin letters without accents (OCR
    drops them, and `đ` is a separate letter that no decomposition removes)."""
    folded = unicodedata.normalize("NFKC", text).casefold().replace("đ", "d")
    decomposed = unicodedata.normalize("NFD", folded)
    kept, base = [], ""
    for char in decomposed:
        if unicodedata.combining(char) and base and base < "ɏ":  # a mark on a Latin letter (up to Latin Extended-B)
            continue
        kept.append(char)
        if not unicodedata.combining(char):
            base = char
    composed = unicodedata.normalize("NFC", "".join(kept))
    return _SPACES.sub(" ", "".join(" " if _separates(char) else char for char in composed)).strip()


def _separates(char: str) -> bool:
    """White space, punctuation and symbols separate words (OCR reads "d'Ivoire" as "d’Ivoire" or "d°Ivoire", and
    "Color: Ivory" as "Color:Ivory"); letters, digits and the marks of Thai or Devanagari vowels do not."""
    return unicodedata.category(char)[0] in "ZPSC"


def _near(text: str, start: int, end: int, phrase: _Phrase) -> str:
    """The text around a phrase where a look-alike word shows what it names: three words either side in a script
    with spaces (a material or a kind is written next to the colour: "IVORY WICKER HEART"), a few characters
    in Chinese, Japanese and Thai. Farther words describe other things ("ivory with traces of paint")."""
    if not phrase.spaced:
        return text[max(0, start - _LOOKALIKE_REACH_UNSPACED) : end + _LOOKALIKE_REACH_UNSPACED]
    before, after = text[:start].split(" "), text[end:].split(" ")
    return " ".join([*before[-_LOOKALIKE_WORDS:], text[start:end], *after[: _LOOKALIKE_WORDS + 1]])


def _overlaps(span: tuple[int, int], others: Sequence[tuple[int, int]]) -> bool:
    return any(span[0] < other_end and other_start < span[1] for other_start, other_end in others)


class _Alternation:
    """One regex for many phrases, built as a trie of their letters (a plain alternation of hundreds of phrases tries
    each one at every position: 1-2 ms for a listing's description, against microseconds this way). At each place the
    longest phrase wins, so the most specific one is reported. Latin-script phrases match at word edges only."""

    def __init__(self, phrases: Sequence[_Phrase]) -> None:
        self.phrases: dict[tuple[str, bool], _Phrase] = {}
        for phrase in sorted(phrases, key=lambda p: len(p.text), reverse=True):
            self.phrases.setdefault((phrase.text, phrase.bounded), phrase)  # 象牙 of two languages reports the first
        bounded, anywhere = ([text for text, edges in self.phrases if edges == wanted] for wanted in (True, False))
        parts = ([rf"(?<!\w)(?:{_trie(bounded)})(?!\w)"] if bounded else []) + ([_trie(anywhere)] if anywhere else [])
        self.regex = re.compile("|".join(parts) or "(?!)")

    def phrase_of(self, found: re.Match[str]) -> _Phrase:
        """The phrase that matched."""
        return self.phrases.get((found.group(), True)) or self.phrases[(found.group(), False)]

    def covers(self, text: str, span: tuple[int, int]) -> bool:
        """Whether a match starting anywhere in `text` covers `span` (matches may overlap one another)."""
        position = 0
        while (found := self.regex.search(text, position)) is not None and found.start() <= span[0]:
            if span[1] <= found.end():
                return True
            position = found.start() + 1
        return False


def _trie(texts: Sequence[str]) -> str:
    """A regex matching any of `texts`, the longest first where one is the start of another (a greedy `?`)."""
    root: dict[str, dict] = {}
    for text in texts:
        node = root
        for char in text:
            node = node.setdefault(char, {})
        node[""] = {}  # a phrase ends here

    def pattern(node: dict[str, dict]) -> str:
        branches = [re.escape(char) + pattern(child) for char, child in sorted(node.items()) if char]
        if not branches:
            return ""
        body = branches[0] if len(branches) == 1 else f"(?:{'|'.join(branches)})"
        return f"(?:{body})?" if "" in node else body

    return pattern(root)
