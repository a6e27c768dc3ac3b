"""What reading the text on photos catches, what it costs in false alarms, and how fast it is.

    python benchmarks/text_evidence.py [--backgrounds 3] [--speed-photos 300] [--model M.onnx]

Needs ../shared/data (val photos only: nothing here was fitted on them), the text extra, and the fonts of
tests/captions.py. Measures, in one run:
  recall       each seller's phrase of tests/text_phrases.toml written onto several val photos (harmless everyday
               ones and wildlife-products ones): how often the text names its label, and the decision with and without
               reading text, per language
  look-alikes  each harmless phrase of the same file (colours, places, dishes) written the same way: how often text
               names a product
  open world   every everyday-v1 val photo and clothing val photo as they are (packaging, labels, scenes): photos whose
               text names a product, and decisions that text changed
  speed        `scan` over val photos, 62 % of them captioned as the sale posts of issue 23 are, with and without
               --read-text (photos/s, one run: a ratio), and one photo's latency (p50) from JPEG bytes
"""

from __future__ import annotations

import argparse
import csv
import io
import os
import random
import statistics
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

from PIL import Image

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))
SHARED = REPO.parent / "shared" / "data"
CAPTIONED_SHARE = 0.62  # of real ivory-sale photos carry readable text (issue 23's private sample)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backgrounds", type=int, default=3, help="val photos each phrase is written onto")
    parser.add_argument("--speed-photos", type=int, default=300)
    parser.add_argument("--model", type=Path, help="default: the shipped model")
    parser.add_argument("--only", choices=("recall", "look-alikes", "open-world", "speed"), help="one measurement")
    args = parser.parse_args(argv)
    if not SHARED.is_dir():
        print(f"needs the shared photos at {SHARED}", file=sys.stderr)
        return 2

    from captions import caption, phrases

    from wildvision import Classifier

    plain = Classifier(args.model, threads=1)
    reading = Classifier(args.model, threads=1, read_text=True)
    rows = val_rows()
    backgrounds = [row for row in rows if row["source"] in ("caltech101", "grocery", "trashnet", "met", "towneley")]
    positive, negative = phrases()
    everyday = [row for row in rows if row["source"] in ("caltech101", "grocery", "trashnet", "clothing")]
    measurements = {
        "recall": lambda: recall(positive, backgrounds, args.backgrounds, plain, reading, caption),
        "look-alikes": lambda: look_alikes(negative, backgrounds, args.backgrounds, reading, caption),
        "open-world": lambda: open_world(everyday, plain, reading),
        "speed": lambda: speed(rows, positive, args.speed_photos, args.model, caption),
    }
    for name, measure in measurements.items():
        if args.only in (None, name):
            measure()
    return 0


def val_rows() -> list[dict]:
    rows = []
    for dataset in ("wildlife-products-v1", "everyday-v1"):
        folder = SHARED / dataset
        rows += [{**row, "file": folder / row["path"]}
                 for row in csv.DictReader((folder / "manifest.csv").open(encoding="utf-8")) if row["split"] == "val"]
    random.Random(0).shuffle(rows)
    return rows


def written_photos(phrase_list, backgrounds, per_phrase, caption):
    """Each phrase on `per_phrase` photos: (phrase, photo) pairs."""
    for number, phrase in enumerate(phrase_list):
        for copy in range(per_phrase):
            row = backgrounds[(number * per_phrase + copy) % len(backgrounds)]
            photo = Image.open(row["file"]).convert("RGB")
            yield phrase, caption(photo, phrase.text, phrase.language, seed=number * 31 + copy)[0]


def recall(positive, backgrounds, per_phrase, plain, reading, caption) -> None:
    found, flagged_with, flagged_without, total = Counter(), Counter(), Counter(), Counter()
    for phrase, photo in written_photos(positive, backgrounds, per_phrase, caption):
        result = reading.predict(photo)
        total[phrase.language] += 1
        found[phrase.language] += phrase.label in result.text.labels
        flagged_with[phrase.language] += result.decision != "allow"
        flagged_without[phrase.language] += plain.predict(photo).decision != "allow"
    print(f"\nrecall: sellers' phrases written on {per_phrase} val photos each "
          "(text names the label · flagged with text · flagged by the image alone)")
    for language in sorted(total, key=lambda name: -found[name] / total[name]):
        n = total[language]
        print(f"  {language:8} {found[language] / n:6.1%} · {flagged_with[language] / n:6.1%} · "
              f"{flagged_without[language] / n:6.1%}  (n={n})")
    n = sum(total.values())
    print(f"  {'all':8} {sum(found.values()) / n:6.1%} · {sum(flagged_with.values()) / n:6.1%} · "
          f"{sum(flagged_without.values()) / n:6.1%}  (n={n})")


def look_alikes(negative, backgrounds, per_phrase, reading, caption) -> None:
    named, total = Counter(), Counter()
    examples = []
    for phrase, photo in written_photos(negative, backgrounds, per_phrase, caption):
        result = reading.predict(photo)
        total[phrase.language] += 1
        if result.text.matches:
            named[phrase.language] += 1
            examples.append(f"{phrase.text!r} read as {[line.text for line in result.text.lines]}")
    n = sum(total.values())
    print(f"\nlook-alikes: harmless phrases written on val photos: text named a product on {sum(named.values())} "
          f"of {n} ({sum(named.values()) / n:.1%})")
    for example in examples:
        print(f"  {example}")


def open_world(rows, plain, reading) -> None:
    photos, named, changed, flagged = Counter(), Counter(), Counter(), Counter()
    words = defaultdict(list)
    for row in rows:
        with_text, without = reading.predict(row["file"]), plain.predict(row["file"])
        source = row["source"]
        photos[source] += 1
        flagged[source] += with_text.decision != "allow"
        if with_text.text.matches:
            named[source] += 1
            words[source].append(f"{row['path']}: {[(m.phrase, m.text) for m in with_text.text.matches]}")
        changed[source] += with_text.decision != without.decision
    print("\nopen world: val photos as they are (text names a product · decision changed by text · flagged in all)")
    for source in sorted(photos):
        n = photos[source]
        print(f"  {source:10} {named[source]:3} ({named[source] / n:.2%}) · {changed[source]:3} · "
              f"{flagged[source] / n:.2%}  (n={n})")
        for line in words[source]:
            print(f"    {line}")


def speed(rows, positive, count, model, caption) -> None:
    from wildvision import Classifier
    from wildvision.scan import ScanInput, scan

    rng = random.Random(1)
    inputs = []
    for number, row in enumerate(rows[:count]):
        photo = Image.open(row["file"]).convert("RGB")
        if rng.random() < CAPTIONED_SHARE:
            phrase = positive[number % len(positive)]
            photo = caption(photo, phrase.text, phrase.language, seed=number)[0]
        buffer = io.BytesIO()
        photo.save(buffer, "JPEG", quality=90)
        inputs.append(ScanInput(buffer.getvalue(), row["path"]))
    rates, cpu = {}, {}
    for read_text in (False, True):
        classifier = Classifier(model, threads=1, read_text=read_text)
        list(scan(inputs[:8], classifier, scorers=2))  # warm both engines
        started, cpu_started = time.perf_counter(), time.process_time()
        records = list(scan(inputs, classifier, scorers=2, workers=2))
        rates[read_text] = len(records) / (time.perf_counter() - started)
        cpu[read_text] = (time.process_time() - cpu_started) / len(records)
    cores = os.cpu_count() or 1
    print(f"\nspeed: scan of {len(inputs)} val photos, {CAPTIONED_SHARE:.0%} captioned, 2 scorers x 1 thread")
    print("  CPU time per photo is what a busy machine distorts least; cores / CPU time is the rate on idle cores")
    for read_text, name in ((False, "without --read-text"), (True, "with --read-text   ")):
        print(f"  {name} {rates[read_text]:6.1f} photos/s ({rates[read_text] / rates[False]:.2f}x); "
              f"{cpu[read_text] * 1000:5.0f} ms CPU per photo, {cores / cpu[read_text]:5.1f} photos/s on {cores} idle cores")
    for read_text in (False, True):
        classifier = Classifier(model, read_text=read_text)
        times = []
        for item in inputs[:60]:
            started = time.perf_counter()
            classifier.predict(item.file)
            times.append(time.perf_counter() - started)
        print(f"  one photo, p50 {'with' if read_text else 'without'} text: {statistics.median(times) * 1000:.0f} ms")


if __name__ == "__main__":
    raise SystemExit(main())
