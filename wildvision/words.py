"""A listing's own words: the products its title and description name, and the sale cues and reporting words that say
whether they are offered or only spoken of.

On real sale posts the seller's words are the strongest evidence a platform has (the lexicon alone flagged 91 % of
ivory-sale posts, the photos about half), so `Classifier.predict_listing`, `scan --listings`, the service and the
client all read them here, with the same `Lexicon` that judges the words on photos. Each finding is a
`wildvision.decision.Reason` naming its source, so a reviewer sees why and a platform can count which evidence fires.
"""

from __future__ import annotations

import re
from typing import Sequence

from wildvision.decision import Reason
from wildvision.text import Lexicon, TextEvidence

__all__ = ["WORD_SOURCES", "listing_words", "split_run_ons"]

WORD_SOURCES = ("title", "description")  # a listing's own words, as `Reason.source` names them
# A lower-case letter followed by a capital inside a word: "IvoryBuy", "#HandCarved", "#RealIvory". Sellers run words
# together in hashtags, and scraped posts lose the line break between a title and its text ("Mammoth IvoryBuy this").
_CAMEL = re.compile(r"(?<=[a-zà-ÿ])(?=[A-ZÀ-Þ])")


def split_run_ons(text: str) -> str:
    """`text` with words that were run together at a change of case set apart (`_CAMEL`): "#RealIvory" reads as
    "# Real Ivory", which the lexicon's word-edge phrases then find. Hashtags need nothing else: '#' separates words."""
    return _CAMEL.sub(" ", text)


def listing_words(
    lexicon: Lexicon, *, title: str | None = None, description: str | None = None,
    photo_texts: Sequence[TextEvidence | None] = (),
) -> tuple[Reason, ...]:
    """What the seller's words say: products named in the title and description, and sale cues and reporting words
    there and on the photos (`photo_texts`, in the photos' order: the products named on photos are already in each
    photo's own `TextEvidence`)."""
    reasons: list[Reason] = []
    for source, text in (("title", title), ("description", description)):
        if text:
            reasons += _reasons(lexicon, source, split_run_ons(_checked(source, text)), products=True)
    for position, evidence in enumerate(photo_texts):
        for line in evidence.lines if evidence is not None else ():
            reasons += _reasons(lexicon, f"words on photo {position}", line.text, products=False)
    return tuple(reasons)


def _reasons(lexicon: Lexicon, source: str, text: str, *, products: bool) -> list[Reason]:
    named = [Reason(source, label, "product", phrase) for label, phrase, _ in lexicon.products(text)] if products else []
    sale, reporting = lexicon.cues(text)
    return [*named, *(Reason(source, None, "sale", cue) for cue in sale),
            *(Reason(source, None, "reporting", word) for word in reporting)]


def _checked(source: str, text: object) -> str:
    if not isinstance(text, str):
        raise TypeError(f"a listing's {source} must be text (str), got {type(text).__name__}")
    return text
