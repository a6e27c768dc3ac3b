"""What a listing's own words catch, and the fit of the weights they are scored by.

    python benchmarks/listing_words.py            # figures on the held-out part
    python benchmarks/listing_words.py --fit      # refit the lexicon's [listing] weights on the fitting part
    python benchmarks/listing_words.py --errors   # the fitting part's mistakes, to improve the lexicon by

The development set is `benchmarks/listing_words.csv` (446 listings in the twelve languages, written for this from
the phrasing that TRAFFIC, IFAW, WWF, EIA, the Wildlife Justice Commission and PanNature quote: sale listings of
every product, look-alikes, colour lists, news and advocacy, everyday listings) and, where `../shared/data` has it,
`listing-text-v1` (real product titles of a UK gift retailer and of Open Food Facts, all harmless; Walters Art Museum
object records, "title | medium", whose medium names ivory or tortoiseshell). Every listing falls by a hash of its
id into the fitting part (70 %) or the held-out part (30 %). The lexicon's sale, reporting and colour words were
written and corrected looking at the fitting part only, and the weights are fitted on it; every figure printed
without `--errors` is on the held-out part, which neither touched.

The weights: a listing's words are in one of five states for a label (`wildvision.decision.words_state`), and a
logistic model on one-hot states has the states' own log-odds as its maximum-likelihood fit, so each weight is the
log-odds of a sale among the fitting part's listings in that state (with half a listing added to each count), less
the intercept (the log-odds of a listing that names nothing). A listing goes to review from a fused score of 0.5:
where its words make a sale more likely than not, on this set's mix.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import math
import re
import sys
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from wildvision.decision import decide_listing, words_state  # noqa: E402
from wildvision.text import Lexicon, ListingWeights, default_lexicon_path  # noqa: E402
from wildvision.words import listing_words  # noqa: E402

DEVELOPMENT_SET = REPO / "benchmarks" / "listing_words.csv"
SHARED_TEXT = REPO.parent / "shared" / "data" / "listing-text-v1" / "listing_text.csv"
HELD_OUT_SHARE = 0.3
REVIEW_AT = 0.5  # a sale more likely than not
STATES = ("for_sale", "named", "reported", "mixed")
# Strongest first: a listing that names two products is in the state of the one it most offers.
_STATE_ORDER = ("for_sale", "mixed", "named", "reported", "not_named")
_PRODUCTS = {"ivory", "tortoiseshell"}  # listing-text-v1's labels that the lexicon has; horn_unspecified is left out


@dataclass(frozen=True)
class Listing:
    id: str
    source: str  # the development set ("written"), or listing-text-v1's source
    language: str
    label: str  # the product it sells, or "harmless"
    kind: str  # sale, lookalike, colour_list, news, everyday; a shared source's own name
    title: str
    description: str

    @property
    def part(self) -> str:
        digest = int(hashlib.sha256(f"{self.source}:{self.id}".encode()).hexdigest()[:8], 16)
        return "held_out" if digest % 1000 < HELD_OUT_SHARE * 1000 else "fitting"

    @property
    def sells(self) -> bool:
        return self.label != "harmless"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--fit", action="store_true", help="refit the [listing] weights and write them to the lexicon")
    parser.add_argument("--errors", action="store_true", help="print the fitting part's mistakes")
    args = parser.parse_args(argv)
    listings = development_set()
    lexicon = Lexicon.load()
    fitting = [listing for listing in listings if listing.part == "fitting"]
    if args.fit:
        weights = fit_weights(fitting, lexicon)
        write_weights(weights)
        print(f"fitted on {len(fitting)} listings: {weights}")
        lexicon = Lexicon.load()
    if args.errors:
        print_errors(fitting, lexicon)
        return 0
    print_figures([listing for listing in listings if listing.part == "held_out"], lexicon)
    return 0


def development_set() -> list[Listing]:
    """The written development set, and listing-text-v1 where the shared data has it."""
    with DEVELOPMENT_SET.open(encoding="utf-8", newline="") as source:
        listings = [Listing(row["id"], "written", row["language"], row["label"], row["kind"], row["title"],
                            row["description"]) for row in csv.DictReader(source)]
    if SHARED_TEXT.is_file():
        with SHARED_TEXT.open(encoding="utf-8", newline="") as source:
            listings += [Listing(row["source_id"], row["source"], row["language"] or "?", row["label"], row["source"],
                                 row["text"], "")
                         for row in csv.DictReader(source) if row["label"] in _PRODUCTS | {"harmless"}]
    else:
        print(f"({SHARED_TEXT} is absent: the written development set alone)", file=sys.stderr)
    return listings


def state_of(listing: Listing, lexicon: Lexicon) -> str:
    """The listing's strongest state over the labels its words name."""
    reasons = listing_words(lexicon, title=listing.title, description=listing.description)
    states = {words_state(label, reasons) for label in lexicon.labels}
    return next(state for state in _STATE_ORDER if state in states)


def fit_weights(listings: list[Listing], lexicon: Lexicon) -> ListingWeights:
    counts: dict[str, Counter] = defaultdict(Counter)
    for listing in listings:
        counts[state_of(listing, lexicon)][listing.sells] += 1

    def log_odds(state: str) -> float:
        return math.log((counts[state][True] + 0.5) / (counts[state][False] + 0.5))

    intercept = log_odds("not_named")
    return ListingWeights(intercept=round(intercept, 3), **{state: round(log_odds(state) - intercept, 3)
                                                            for state in STATES}, review=REVIEW_AT)


def write_weights(weights: ListingWeights) -> None:
    """Replace the lexicon's `[listing]` table (its last) with `weights`."""
    path = default_lexicon_path()
    text = path.read_text(encoding="utf-8")
    table = "[listing]\n" + "".join(f"{name} = {getattr(weights, name)}\n" for name in
                                    ("intercept", *STATES, "review"))
    path.write_text(re.sub(r"\[listing\]\n(?:\w+ = .*\n)*", lambda _: table, text, count=1) if "[listing]\n" in text
                    else text.rstrip("\n") + "\n\n" + table, encoding="utf-8")


def decision(listing: Listing, lexicon: Lexicon) -> str:
    """The decision the library gives a listing of these words and no photo."""
    words = listing_words(lexicon, title=listing.title, description=listing.description)
    return decide_listing([], {}, words=words, weights=lexicon.weights).decision


def print_figures(listings: list[Listing], lexicon: Lexicon) -> None:
    flagged = {listing.id + listing.source: decision(listing, lexicon) != "allow" for listing in listings}

    def rate(group: list[Listing]) -> str:
        hits = sum(flagged[listing.id + listing.source] for listing in group)
        return f"{hits / len(group):6.1%} ({hits}/{len(group)})" if group else "     -"

    written = [listing for listing in listings if listing.source == "written"]
    print(f"held-out part: {len(listings)} listings ({len(written)} written), lexicon {lexicon.identity}")
    print(f"weights: {lexicon.weights}\n")
    kinds = ("sale", "lookalike", "colour_list", "news", "everyday")
    print("written listings flagged (review or block), per language:")
    print(f"{'language':10}" + "".join(f"{kind:>18}" for kind in kinds))
    for language in sorted({listing.language for listing in written}):
        print(f"{language:10}" + "".join(f"{rate([x for x in written if x.language == language and x.kind == kind]):>18}"
                                         for kind in kinds))
    print(f"{'all':10}" + "".join(f"{rate([x for x in written if x.kind == kind]):>18}" for kind in kinds))
    print("\nsale listings flagged, per product:")
    for label in sorted({listing.label for listing in written if listing.sells}):
        print(f"  {label:18}{rate([x for x in written if x.label == label])}")
    shared = [listing for listing in listings if listing.source != "written"]
    if shared:
        print("\nlisting-text-v1 flagged:")
        for source in sorted({listing.source for listing in shared}):
            for label in ("harmless", *sorted(_PRODUCTS)):
                group = [x for x in shared if x.source == source and x.label == label]
                if group:
                    print(f"  {source:16}{label:14}{rate(group)}")


def print_errors(listings: list[Listing], lexicon: Lexicon) -> None:
    for listing in listings:
        flagged = decision(listing, lexicon) != "allow"
        if flagged != listing.sells:
            words = listing_words(lexicon, title=listing.title, description=listing.description)
            found = "; ".join(f"{r.signal}:{r.phrase}" for r in words) or "nothing"
            print(f"{'FALSE ALARM' if flagged else 'MISSED':11} {listing.source}/{listing.id} [{listing.kind}] "
                  f"{listing.title[:80]!r} {listing.description[:100]!r} -> {found}")


if __name__ == "__main__":
    sys.exit(main())
