"""Self-contained HTML pages (the evaluation report, contact sheets, comparisons), with one stylesheet, one way of
writing a table, a section and a value, and thumbnails embedded as data URIs, so a page can be mailed or attached
to a ticket and still show every photo."""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path
from typing import Iterable, Sequence

from wildvision.images import load_image

__all__ = ["STYLE", "cell_text", "data_uri", "document", "escape", "figure", "image", "page", "section", "table",
           "thumbnail"]

STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em; color: #222; }
h1 { font-size: 1.6em; } h2 { margin-top: 2em; border-bottom: 1px solid #ccc; } h3 { margin-bottom: 0.3em; }
table { border-collapse: collapse; margin: 0.5em 0; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
th { background: #f2f2f2; }
p.note { color: #555; font-size: 0.9em; }
img.plot { max-width: 100%; }
.gallery { display: flex; flex-wrap: wrap; gap: 0.6em; }
.gallery figure { margin: 0; width: min-content; font-size: 0.8em; overflow-wrap: anywhere; }
"""
_JPEG_QUALITY = 80  # thumbnails: small files, and a photo is still easy to judge


def cell_text(value: object) -> str:
    """A value as a table shows it: rates and scores to four places, and n/a where a metric is undefined (nothing to
    take it over)."""
    if value is None:
        return "n/a"
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def escape(value: object) -> str:
    """Any cell or caption as escaped HTML text (`cell_text`)."""
    return html.escape(cell_text(value))


def thumbnail(path: Path, side: int) -> bytes:
    """The photo upright and in RGB, as the model read it, shrunk to fit `side` pixels, as JPEG bytes."""
    photo = load_image(path, min_side=side)  # large JPEGs decode at reduced scale
    photo.thumbnail((side, side))
    buffer = io.BytesIO()
    photo.save(buffer, format="JPEG", quality=_JPEG_QUALITY)
    return buffer.getvalue()


def data_uri(path: Path, side: int) -> str:
    """`thumbnail` as a JPEG data URI."""
    return _data_uri("jpeg", thumbnail(path, side))


def image(kind: str, data: bytes, alt: str, *, css_class: str) -> str:
    """An <img> of `data` (`kind`: jpeg, png) embedded in the page."""
    return f'<img class="{css_class}" alt="{escape(alt)}" src="{_data_uri(kind, data)}">'


def figure(path: Path, caption_html: str, side: int = 200) -> str:
    """A thumbnail of the photo with its caption; `caption_html` is HTML: escape its text (`escape`)."""
    thumb = image("jpeg", thumbnail(path, side), path.name, css_class="thumbnail")
    return f"<figure>{thumb}<figcaption>{caption_html}</figcaption></figure>"


def table(header: Sequence[object], rows: Iterable[Sequence[object]], *, table_id: str = "") -> str:
    """A table of escaped cells; without `header`, a table of facts with no heading row."""
    head = "<tr>" + "".join(f"<th>{escape(cell)}</th>" for cell in header) + "</tr>\n" if header else ""
    body = "".join("<tr>" + "".join(f"<td>{escape(cell)}</td>" for cell in row) + "</tr>\n" for row in rows)
    identity = f' id="{table_id}"' if table_id else ""
    return f"<table{identity}>\n{head}{body}</table>\n"


def section(title: str, note: str, body: str) -> str:
    """A titled part of a page: an explaining note, then `body` (HTML)."""
    return f'<section>\n<h2>{escape(title)}</h2>\n<p class="note">{escape(note)}</p>\n{body}\n</section>'


def document(title: str, body: str) -> str:
    """A whole HTML file: the shared stylesheet and `body` (HTML)."""
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n<title>{escape(title)}</title>\n'
            f"<style>{STYLE}</style>\n</head>\n<body>\n{body}\n</body>\n</html>\n")


def page(title: str, sections: Sequence[tuple[str, str, str]]) -> str:
    """An HTML document headed `title`, of (heading, note, body HTML) sections."""
    return document(title, f"<h1>{escape(title)}</h1>\n" + "\n".join(section(*part) for part in sections))


def _data_uri(kind: str, data: bytes) -> str:
    return f"data:image/{kind};base64," + base64.b64encode(data).decode("ascii")
