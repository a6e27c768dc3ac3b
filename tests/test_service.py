"""`wildvision serve` through a real HTTP client: uvicorn on a free loopback port, httpx as the client."""

from __future__ import annotations

import io
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Iterator

import pytest

from conftest import REPO, make_photo
from wildvision import Classifier
from wildvision.known_items import KnownItemIndex

httpx = pytest.importorskip("httpx", reason="service tests need the [test] extra")
uvicorn = pytest.importorskip("uvicorn", reason="service tests need the [serve] extra")
from wildvision.service import create_app  # noqa: E402

LIMIT = 200_000  # bytes: small, so an oversized upload is cheap to make


def jpeg_bytes(label: str, seed: int, size: tuple[int, int] = (160, 128)) -> bytes:
    buffer = io.BytesIO()
    make_photo(label, seed, size=size).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


@contextmanager
def running(app) -> Iterator[str]:
    """Serve `app` with uvicorn in a thread on a free loopback port; yields the base URL."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert server.started, "uvicorn did not start"
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


@pytest.fixture(scope="module")
def classifier(tiny_run) -> Classifier:
    return Classifier(tiny_run["model"])


@pytest.fixture(scope="module")
def service(classifier) -> Iterator[httpx.Client]:
    with running(create_app(classifier, max_bytes=LIMIT)) as url, httpx.Client(base_url=url, timeout=30) as client:
        yield client


@pytest.mark.slow
def test_health_and_openapi(service, classifier):
    assert service.get("/health").json() == {"status": "ok", "model_name": "tiny", "model_version": "0.0.1",
                                             "known_items": None}
    schema = service.get("/openapi.json").json()
    operation = schema["paths"]["/predict"]["post"]
    assert set(operation["requestBody"]["content"]) == {"image/*", "application/octet-stream"}
    assert {"200", "400", "413", "415", "422"} <= set(operation["responses"])


@pytest.mark.slow
def test_predict_returns_the_library_s_prediction(service, classifier):
    photo = jpeg_bytes("ivory", 3)
    response = service.post("/predict", content=photo, headers={"content-type": "image/jpeg"})
    assert response.status_code == 200
    expected = classifier.predict(photo).to_dict()
    body = response.json()
    assert set(body) == set(expected) and body["decision"] == expected["decision"]
    assert body["scores"] == pytest.approx(expected["scores"], abs=1e-6)


@pytest.mark.slow
def test_concurrent_requests_get_their_own_answers(service, classifier):
    photos = [jpeg_bytes(("ivory", "horn", "not_ivory")[n % 3], n) for n in range(24)]
    expected = [classifier.predict(photo).scores for photo in photos]

    def ask(photo: bytes) -> dict:
        return service.post("/predict", content=photo, headers={"content-type": "image/jpeg"}).json()["scores"]

    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(pool.map(ask, photos))
    for answer, scores in zip(answers, expected):
        assert answer == pytest.approx(scores, abs=1e-6)


def _chunks(data: bytes) -> Iterator[bytes]:
    for start in range(0, len(data), 65536):
        yield data[start : start + 65536]


@pytest.mark.slow
@pytest.mark.parametrize("case, body, content_type, status, category", [
    ("empty", b"", "image/jpeg", 400, "empty"),
    ("not an image", b"%PDF-1.4 an invoice", "image/jpeg", 422, "not_an_image"),
    ("truncated", jpeg_bytes("ivory", 1, (640, 480))[:900], "image/jpeg", 422, "corrupt"),
    ("too large", b"\xff" * (LIMIT + 1), "image/jpeg", 413, "too_large"),
    ("too large, chunked", _chunks(b"\xff" * (LIMIT * 3)), "application/octet-stream", 413, "too_large"),
    ("a form, not an image", b"--x\r\n\r\n", "multipart/form-data; boundary=x", 415, "wrong_content_type"),
    ("JSON", b'{"url": "http://example.com/a.jpg"}', "application/json", 415, "wrong_content_type"),
])
def test_bad_uploads_get_a_clear_4xx(service, case, body, content_type, status, category):
    response = service.post("/predict", content=body, headers={"content-type": content_type})
    assert response.status_code == status, case
    detail = response.json()["detail"]
    assert detail["category"] == category and detail["error"]


@pytest.mark.slow
def test_a_service_with_an_index_answers_with_the_match(classifier, tmp_path):
    index = KnownItemIndex(tmp_path / "known.sqlite", classifier, create=True)
    known = jpeg_bytes("ivory", 7, (480, 384))
    index.add([known], ["case-7"])
    with running(create_app(classifier, index=index)) as url, httpx.Client(base_url=url, timeout=30) as client:
        assert client.get("/health").json()["known_items"] == 1
        repost = client.post("/predict", content=known, headers={"content-type": "image/jpeg"}).json()
        other = client.post("/predict", content=jpeg_bytes("horn", 8), headers={"content-type": "image/png"}).json()
    assert repost["match"]["reference"] == "case-7" and repost["match"]["hash_distance"] == 0
    assert "match" in other and other["match"] is None


@pytest.mark.slow
def test_the_serve_command_listens_and_answers(tiny_run):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [sys.executable, "-m", "wildvision", "--model", str(tiny_run["model"]), "serve", "--port", str(port)]
    process = subprocess.Popen(command, cwd=REPO, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                assert httpx.get(f"http://127.0.0.1:{port}/health").json()["status"] == "ok"
                break
            except httpx.TransportError:
                time.sleep(0.1)
        else:
            pytest.fail("the service did not answer within 30 s")
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_importing_wildvision_does_not_import_the_web_stack():
    script = "import sys, wildvision, wildvision.cli; print(sorted({'fastapi', 'uvicorn', 'starlette'} & set(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
