"""The documentation: the README is a front page that starts with the two commands; the site builds strictly and
offline; every link of both resolves; the API reference shows each public class's docstring; and the examples of the
get-started and Python API pages run, on generated photos where the shared ones are absent."""

from __future__ import annotations

import html
import inspect
import re
import shlex
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

from conftest import REPO, SHARED_DATA, make_photo

README = REPO / "README.md"
DOCS = REPO / "docs"
EXECUTED_PAGES = ("get-started.md", "python-api.md", "../README.md")  # examples that run below, so never drift
README_MAX_LINES = 250
README_COMMANDS = (
    'pip install . && wildvision scan PATH/TO/PHOTOS -o results.jsonl',
    'pip install ".[train,test]" && python -m pytest',
)
# What the API reference must show, each with its own docstring (the errors: every one a caller can meet).
REFERENCED = (
    "Classifier", "Prediction", "OperatingPoint", "ScanRecord", "ImageLoadError", "WildvisionError", "ModelFormatError",
    "OperatingPointError", "IndexFormatError", "ResumeError", "records.RecordFormatError", "text.LexiconError",
    "listings.ListingError", "ModelInfo", "KnownItemIndex", "Explanation", "read_operating_points", "scan_to_file",
)
_LINK = re.compile(r"!?\[(?:[^\]\[]|\[[^\]]*\])*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def test_readme_is_a_front_page_that_starts_with_the_two_commands():
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_MAX_LINES, f"README has {len(lines)} lines; move detail to a page under docs/"
    fence = lines.index("```bash")
    assert lines[:fence] == ["# wildvision", ""] and tuple(lines[fence + 1:fence + 3]) == README_COMMANDS
    assert lines[fence + 3] == "```"


def test_every_readme_link_resolves(site):
    text = README.read_text(encoding="utf-8")
    links = [target for target in _LINK.findall(_without_code(text)) if not urlsplit(target).scheme]
    assert len(links) >= 10, "the README should link into the site"
    for target in links:
        parts = urlsplit(target)
        if not parts.path:
            assert _slug_in_markdown(text, parts.fragment), f"README: no heading for #{parts.fragment}"
            continue
        path = (REPO / unquote(parts.path)).resolve()
        assert path.exists(), f"README links to {target}, which does not exist"
        if parts.fragment:
            assert path.parent == DOCS and path.suffix == ".md", f"README: {target}: anchors only into docs/ pages"
            page = site / path.relative_to(DOCS).with_suffix(".html")
            assert parts.fragment in _ids(page), f"README links to {target}, but that page has no such heading"


def test_every_site_link_and_image_resolves(site):
    pages = sorted(page for page in site.rglob("*.html") if page.name != "404.html")  # 404's links are absolute
    assert {"index.html", "get-started.html", "reference.html", "text-evidence.html"} <= {p.name for p in pages}
    checked = 0
    for page in pages:
        source = page.read_text(encoding="utf-8")
        for attribute, target in re.findall(r'\b(href|src)="([^"]*)"', source):
            target = html.unescape(target)
            parts = urlsplit(target)
            if parts.scheme or target.startswith("//"):
                # Outbound links are fine to follow by hand; nothing the page loads may come from outside.
                assert attribute == "href" or parts.scheme == "data", f"{page.name} loads {target} from outside"
                continue
            resolved = (page.parent / unquote(parts.path)).resolve() if parts.path else page
            if resolved.is_dir():
                resolved = resolved / "index.html"
            assert resolved.exists(), f"{page.relative_to(site)}: {attribute}={target} does not resolve"
            if parts.fragment and resolved.suffix == ".html":
                assert parts.fragment in _ids(resolved), f"{page.relative_to(site)}: no #{parts.fragment} there"
            checked += 1
    assert checked > 500


def test_the_site_loads_no_web_fonts_or_cdn_assets(site):
    for path in list(site.rglob("*.html")) + list(site.rglob("*.css")):
        text = path.read_text(encoding="utf-8", errors="replace")
        assert "fonts.googleapis" not in text and "fonts.gstatic" not in text, path
        assert not re.search(r'<(?:script|link)[^>]+(?:src|href)="(?:https?:)?//', text), path


@pytest.mark.parametrize("name", [name.rpartition(".")[2] for name in REFERENCED])
def test_the_api_reference_shows_each_public_name_with_its_docstring(site, name):
    import wildvision

    qualified = next(q for q in REFERENCED if q.rpartition(".")[2] == name)
    module, _, _ = qualified.rpartition(".")
    obj = getattr(__import__(f"wildvision.{module}", fromlist=[name]) if module else wildvision, name)
    page = (site / "reference.html").read_text(encoding="utf-8")
    assert f'id="wildvision.{qualified}"' in page, f"the reference does not list {qualified}"
    docstring = inspect.getdoc(obj)
    assert docstring, f"{qualified} has no docstring to show"
    first_sentence = " ".join(docstring.split("\n\n")[0].split())[:60]
    shown = " ".join(html.unescape(re.sub(r"<[^>]+>", "", page)).split())
    assert _plain(first_sentence) in _plain(shown), f"{qualified}'s docstring is not in the reference"


@pytest.fixture
def photos_here(tmp_path, monkeypatch) -> Path:
    """A working folder like a user's: photos/listing.jpg, photos/another.jpg and listing.jpg (real listing-like
    photos from the shared data where it is present, generated ones where not)."""
    (tmp_path / "photos").mkdir()
    real = sorted((SHARED_DATA / "images").rglob("*.jpg"))[:2] if SHARED_DATA.is_dir() else []
    for name, index in (("photos/listing.jpg", 0), ("photos/another.jpg", 1), ("listing.jpg", 0)):
        if len(real) == 2:
            (tmp_path / name).write_bytes(real[index].read_bytes())
        else:
            make_photo("ivory" if index == 0 else "not_ivory", index, size=(320, 240)).save(tmp_path / name)
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.parametrize("page", EXECUTED_PAGES)
def test_the_pages_examples_run(page, photos_here, capsys):
    from wildvision.cli import main

    markdown = (DOCS / page).read_text(encoding="utf-8")
    commands = [line for block in _blocks(markdown, "bash") for line in block.splitlines()
                if line.startswith("wildvision ")]
    for command in commands:
        assert main(shlex.split(command.split("#")[0])[1:]) == 0, command
    namespace: dict[str, object] = {"__name__": f"docs_{page}"}
    blocks = _blocks(markdown, "python")
    assert blocks, f"{page} has no Python example"
    for number, block in enumerate(blocks, 1):
        exec(compile(block, f"docs/{page}, Python block {number}", "exec"), namespace)  # noqa: S102 - our own docs
    if page == "get-started.md":
        assert commands and (photos_here / "results.jsonl").read_text().count("\n") == 2
        assert "ivory=0.2/0.95" in capsys.readouterr().out


# What an example may print about the shipped model in its comments (`# 'sha256:b960b5bd216f8213'`): each is checked
# against the model that ships, so a release that changes them fails here until the pages are updated.
_DIGEST = re.compile(r"sha256:[0-9a-f]{16}")
_THRESHOLDS = re.compile(r"'((?:\w+=[\d.]+/[\d.]+(?:; )?)+)'")
_VERSION = re.compile(r"model_version\W*#\s*'([^']+)'")


def stated_model_values(markdown: str) -> dict[str, set[str]]:
    """The digests, thresholds and versions the code blocks of a page show as output."""
    code = "\n".join(_blocks(markdown, "python") + _blocks(markdown, "bash"))
    return {"digest": set(_DIGEST.findall(code)), "thresholds": set(_THRESHOLDS.findall(code)),
            "version": set(_VERSION.findall(code))}


def test_the_model_values_an_example_prints_are_the_shipped_models(shipped_model):
    from wildvision import Classifier
    from wildvision.classifier import describe_thresholds, twin_path

    shipped = Classifier(shipped_model)
    truth = {"digest": {shipped.identity.digest, Classifier(twin_path(shipped_model, "int8")).identity.digest},
             "thresholds": {describe_thresholds(shipped.info.operating_points)}, "version": {shipped.info.version}}
    for page in [README, *sorted(DOCS.glob("*.md"))]:
        stated = stated_model_values(page.read_text(encoding="utf-8"))
        for kind, values in stated.items():
            assert values <= truth[kind], f"{page.name} shows {kind} {sorted(values - truth[kind])}, the shipped model " \
                                          f"has {sorted(truth[kind])}: update the example, or show no value"
    assert stated_model_values("```python\nresult.model_digest  # 'sha256:d868bba118503bbb'\n```\n")["digest"] == {
        "sha256:d868bba118503bbb"}, "the check reads the values examples print"


NARROW_PAGES = ("get-started.md", "service.md")  # a new user's first pages: no code line cut off at the page's edge
CODE_WIDTH = 80  # characters of a code block the Material theme shows without scrolling, beside both sidebars


@pytest.mark.parametrize("page", NARROW_PAGES)
def test_the_first_pages_code_fits_the_page(page):
    markdown = (DOCS / page).read_text(encoding="utf-8")
    wide = [line for block in _blocks(markdown, r"\w*") for line in block.splitlines() if len(line) > CODE_WIDTH]
    assert not wide, f"{page}: code lines over {CODE_WIDTH} characters, cut off on the page: {wide}"


def test_the_example_runner_fails_on_an_example_that_no_longer_matches_the_code(photos_here):
    stale = "```python\nfrom wildvision import Classifier\nClassifier().predict('listing.jpg').verdict\n```\n"
    with pytest.raises(AttributeError):
        for block in _blocks(stale, "python"):
            exec(compile(block, "stale", "exec"), {})  # noqa: S102


def _blocks(markdown: str, language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```$", markdown, re.S | re.M)


def _without_code(markdown: str) -> str:
    return re.sub(r"^```.*?^```$", "", markdown, flags=re.S | re.M)


def _ids(page: Path) -> set[str]:
    return set(re.findall(r'\bid="([^"]+)"', page.read_text(encoding="utf-8")))


def _slug_in_markdown(markdown: str, fragment: str) -> bool:
    headings = re.findall(r"^#+ (.*)$", _without_code(markdown), re.M)
    return fragment in {re.sub(r"[^\w\- ]", "", h.lower()).strip().replace(" ", "-") for h in headings}


def _plain(text: str) -> str:
    return re.sub(r"[`*_]", "", text)
