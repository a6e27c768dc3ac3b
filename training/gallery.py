"""Self-contained HTML pages of photos (contact sheets, changed decisions): thumbnails embedded as data URIs, so a
page can be mailed or attached to a ticket and still show every photo."""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path
from typing import Iterable, Sequence

from wildvision.images import load_image

__all__ = ["data_uri", "figure", "page", "table"]

_STYLE = """body{font-family:system-ui,sans-serif;margin:2em;max-width:1200px}table{border-collapse:collapse}
td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}th{background:#f4f4f4}
.gallery{display:flex;flex-wrap:wrap;gap:10px}figure{margin:0;width:200px;font-size:12px}
figure img{max-width:200px;max-height:200px}.note{color:#555}"""


def data_uri(path: Path, side: int) -> str:
    """The photo upright and in RGB, as the model read it, shrunk to fit `side` pixels, as a JPEG data URI."""
    image = load_image(path, min_side=side)  # large JPEGs decode at reduced scale
    image.thumbnail((side, side))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=82)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def figure(path: Path, caption: str, side: int = 200) -> str:
    alt = html.escape(path.name)
    return f'<figure><img alt="{alt}" src="{data_uri(path, side)}"><figcaption>{html.escape(caption)}</figcaption></figure>'


def table(header: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    head = "<tr>" + "".join(f"<th>{html.escape(str(cell))}</th>" for cell in header) + "</tr>"
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_cell(cell))}</td>" for cell in row) + "</tr>" for row in rows)
    return f"<table>{head}{body}</table>"


def page(title: str, sections: Sequence[tuple[str, str, str]]) -> str:
    """An HTML document of (heading, note, body HTML) sections."""
    parts = [f"<h2>{html.escape(h)}</h2><p class=note>{html.escape(note)}</p>{body}" for h, note, body in sections]
    return (f"<!DOCTYPE html><html><head><meta charset=utf-8><title>{html.escape(title)}</title><style>{_STYLE}"
            f"</style></head><body><h1>{html.escape(title)}</h1>" + "\n".join(parts) + "</body></html>\n")


def _cell(value: object) -> str:
    if value is None:
        return "n/a"
    return f"{value:.4f}" if isinstance(value, float) else str(value)
