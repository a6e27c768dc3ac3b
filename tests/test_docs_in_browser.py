"""The pages people look at, checked as people see them: every page of the built site, the HTML evaluation report and
`training.compare`'s page, opened in headless Chromium. Each must render its heading, show every image, fetch nothing
from outside the machine and log no console error. Screenshots of what the browser saw go to the test's folder, and
also to `WILDVISION_SCREENSHOTS` when it names a folder (`WILDVISION_SCREENSHOTS=docs/screenshots` refreshes the ones
the README shows)."""

from __future__ import annotations

import functools
import http.server
import os
import shutil
import threading
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from browser import Browser, PageVisit, find_chromium
from conftest import make_photo

CHROMIUM = find_chromium()
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="needs Chromium on PATH: apt-get install chromium (.ci/run installs it)")


@pytest.fixture(scope="module")
def served(site, tmp_path_factory) -> dict[str, object]:
    """The site behind a local HTTP server, as `mkdocs serve` shows it (its search runs in a web worker, which browsers
    refuse to start from file://), with one deliberately faulty page beside it; and one browser for the module."""
    root = tmp_path_factory.mktemp("served")
    shutil.copytree(site, root / "site")
    (root / "faulty.html").write_text(  # what the checks must catch: a broken image, a fetch outside, a console error
        '<!DOCTYPE html><html><head><title>faulty</title><script src="https://cdn.example.invalid/x.js"></script>'
        '</head><body><h1>faulty</h1><img src="missing.png" alt="gone"><script>console.error("boom")</script>'
        "</body></html>")

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        with Browser(CHROMIUM) as browser:
            yield {"browser": browser, "base": f"http://127.0.0.1:{server.server_port}/"}
    finally:
        server.shutdown()
        thread.join()


@pytest.fixture(scope="module")
def report_page(tiny_run, tmp_path_factory) -> Path:
    """The evaluation report of the tiny model the training tests train on generated photos (the session's fixture,
    shared with tests/test_report.py), as `python -m training.evaluate --report` writes it."""
    pytest.importorskip("matplotlib", reason="the evaluation report needs the [train] extra: pip install '.[train]'")
    from training.evaluate import main

    path = tmp_path_factory.mktemp("report") / "report.html"
    assert main(["--model", str(tiny_run["model"]), "--data", str(tiny_run["data"]), "--report", str(path)]) == 0
    return path


@pytest.fixture(scope="module")
def compare_page(tmp_path_factory) -> Path:
    """`training.compare` of the shipped float32 model and its int8 twin on generated photos, with `--html`."""
    from training import compare
    from wildvision.classifier import default_model_path

    photos, path = tmp_path_factory.mktemp("compare-photos"), tmp_path_factory.mktemp("compare") / "compare.html"
    for label in ("ivory", "not_ivory"):
        (photos / label).mkdir()
        for seed in range(6):
            make_photo(label, seed, size=(200, 160)).save(photos / label / f"{label}_{seed}.jpg", quality=90)
    assert compare.main([str(default_model_path()), str(default_model_path("int8")), "--data", str(photos),
                         "--html", str(path)]) == 0
    return path


def _check(visit: PageVisit, base: str) -> None:
    """What a person would notice: a page that did not render, a broken image, a console error; and what an
    offline reader would: anything fetched from outside."""
    assert visit.title and len(visit.text) > 200, f"{visit.url} did not render (title {visit.title!r})"
    assert not visit.broken_images, f"{visit.url}: broken images {visit.broken_images}"
    outside = [url for url in visit.requests if not url.startswith((base, "data:", "blob:", "about:"))]
    assert not outside, f"{visit.url} fetched from outside: {outside}"
    assert not visit.console_errors, f"{visit.url}: console errors {visit.console_errors}"


def _save(visit: PageVisit, name: str, tmp_path: Path) -> None:
    folders = [tmp_path] + ([Path(os.environ["WILDVISION_SCREENSHOTS"])] if os.environ.get("WILDVISION_SCREENSHOTS")
                            else [])
    for folder in folders:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{name}.png").write_bytes(visit.screenshot)
    assert visit.screenshot.startswith(b"\x89PNG") and len(visit.screenshot) > 10_000  # not a blank screen


def test_every_page_of_the_site_renders_offline_with_its_images_and_no_errors(served, site, tmp_path):
    pages = sorted(page.relative_to(site).as_posix() for page in site.rglob("*.html") if page.name != "404.html")
    assert len(pages) >= 14
    images = 0
    for page in pages:
        visit = served["browser"].visit(served["base"] + "site/" + page)
        _check(visit, served["base"])
        images += visit.image_count
        if page == "get-started.html":
            assert "Get started" in visit.title and "pip install" in visit.text
            _save(visit, "site", tmp_path)
        if page == "reference.html":
            assert "A loaded wildvision model" in visit.text and "predict_batch" in visit.text
            _save(visit, "reference", tmp_path)
    assert images >= 2  # the index's screenshot and the model page's plots, shown and not broken


def test_the_evaluation_report_renders_with_its_plots_and_thumbnails(served, report_page, tmp_path):
    visit = served["browser"].visit(report_page.as_uri())  # opened from disk, as a report is read
    _check(visit, report_page.parent.as_uri())
    assert visit.image_count == report_page.read_text(encoding="utf-8").count("<img") >= 3  # plots, thumbnails
    assert "Per-label metrics" in visit.text and "Open world" in visit.text
    _save(visit, "report", tmp_path)


def test_the_compare_page_renders_with_its_thumbnails(served, compare_page, tmp_path):
    visit = served["browser"].visit(compare_page.as_uri())
    _check(visit, compare_page.parent.as_uri())
    assert "Per label" in visit.text
    assert visit.image_count == compare_page.read_text(encoding="utf-8").count("<img")  # every thumbnail shown
    _save(visit, "compare", tmp_path)


def test_the_checks_catch_a_broken_image_an_outside_fetch_and_a_console_error(served):
    visit = served["browser"].visit(served["base"] + "faulty.html")
    assert [urlsplit(url).path for url in visit.broken_images] == ["/missing.png"]
    assert "https://cdn.example.invalid/x.js" in visit.requests
    assert any("boom" in error for error in visit.console_errors)
    with pytest.raises(AssertionError):
        _check(visit, served["base"])
