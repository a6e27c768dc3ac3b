"""`wildvision serve` through a real HTTP client: uvicorn on a free loopback port, httpx (or a raw socket, to play a
slow client) on the other side."""

from __future__ import annotations

import base64
import http.client
import io
import json
import logging
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import pytest
from captions import caption, skip_without_font
from conftest import REPO, make_photo
from PIL import Image

from wildvision import (
    Classifier, Client, ImageLoadError, OperatingPoint, OperatingPointError, Prediction, ServiceError,
)
from wildvision.cli import main
from wildvision.client import _Answer, _from_json, _retry_delay
from wildvision.known_items import KnownItemIndex
from wildvision.model_info import OperatingPoint

httpx = pytest.importorskip("httpx", reason="service tests need the [test] extra")
uvicorn = pytest.importorskip("uvicorn", reason="service tests need the [serve] extra")
prometheus_parser = pytest.importorskip("prometheus_client.parser", reason="service tests need the [serve] extra")
from wildvision.service import Limits, create_app  # noqa: E402

LIMIT = 200_000  # bytes: small, so an oversized upload is cheap to make
JPEG = {"content-type": "image/jpeg"}
MiB = 1024 * 1024
# Clients as platforms call the service: urllib sends `Connection: close` (the service then closes the connection once
# it has answered: the case that reset, issue 25), http.client keeps the connection, httpx sends a chunked body when
# given an iterator.
CLIENTS = ("urllib", "http.client", "httpx", "httpx, chunked")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
# Chromium's own services (component updates, sign-in, autofill), which it calls whatever page it shows: not requests
# of the page under test.
BROWSER_HOUSEKEEPING = re.compile(r"(^|\.)(google\.com|googleapis\.com|gvt1\.com)$")


def jpeg_bytes(label: str, seed: int, size: tuple[int, int] = (160, 128)) -> bytes:
    buffer = io.BytesIO()
    make_photo(label, seed, size=size).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


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


@contextmanager
def client_of(app) -> Iterator[httpx.Client]:
    with running(app) as url, httpx.Client(base_url=url, timeout=30) as client:
        yield client


class Held:
    """A classifier whose predictions wait until `release` is set: requests stay in flight as long as a test needs.
    `started` counts predictions begun."""

    def __init__(self, classifier: Classifier) -> None:
        self.info, self.identity = classifier.info, classifier.identity
        self.classifier = classifier
        self.release = threading.Event()
        self.started = threading.Semaphore(0)

    def predict(self, image, *, operating_points=None):
        self.started.release()
        assert self.release.wait(30), "the test never released the prediction"
        return self.classifier.predict(image, operating_points=operating_points)


class Broken:
    """A classifier with a bug: every prediction raises something no handler expects."""

    def __init__(self, classifier: Classifier) -> None:
        self.info, self.identity = classifier.info, classifier.identity

    def predict(self, image, *, operating_points=None):
        raise RuntimeError("a programming error")


def raw_post(url: str, path: str, headers: dict[str, str], body: bytes = b"") -> socket.socket:
    """Send a request's head (and `body`, however much of the declared one) over a plain socket: a client as slow as
    the test makes it."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=15)
    lines = [f"POST {path} HTTP/1.1", f"Host: {host}", *(f"{name}: {value}" for name, value in headers.items())]
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
    return sock


def response_to(sock: socket.socket) -> http.client.HTTPResponse:
    response = http.client.HTTPResponse(sock)
    response.begin()
    return response


def metric_samples(text: str) -> dict[tuple[str, frozenset], float]:
    return {(sample.name, frozenset(sample.labels.items())): sample.value
            for family in prometheus_parser.text_string_to_metric_families(text) for sample in family.samples}


@pytest.fixture(scope="module")
def classifier(tiny_run) -> Classifier:
    return Classifier(tiny_run["model"])


@pytest.fixture(scope="module")
def service(classifier) -> Iterator[httpx.Client]:
    with client_of(create_app(classifier, limits=Limits(max_bytes=LIMIT))) as client:
        yield client


@pytest.mark.slow
def test_health_and_openapi(service, classifier):
    assert service.get("/health").json() == {"status": "ok", "model_name": "tiny", "model_version": "0.0.1",
                                             "model_precision": "float32", "model_digest": classifier.identity.digest,
                                             "known_items": None}
    schema = service.get("/openapi.json").json()
    operation = schema["paths"]["/predict"]["post"]
    assert set(operation["requestBody"]["content"]) == {"image/*", "application/octet-stream"}
    assert {"200", "400", "408", "413", "415", "422", "503", "504"} <= set(operation["responses"])
    batch = schema["paths"]["/predict/batch"]["post"]
    assert set(batch["requestBody"]["content"]) == {"multipart/form-data", "application/json"}


@pytest.mark.slow
def test_predict_returns_the_library_s_prediction(service, classifier):
    photo = jpeg_bytes("ivory", 3)
    response = service.post("/predict", content=photo, headers=JPEG)
    assert response.status_code == 200
    expected = classifier.predict(photo).to_dict()
    body = response.json()
    assert set(body) == set(expected)  # the library's Prediction, field for field: model file and thresholds too
    assert {key: body[key] for key in body if key != "scores"} == {key: expected[key] for key in body if key != "scores"}
    assert body["scores"] == pytest.approx(expected["scores"], abs=1e-6)


@pytest.mark.slow
def test_concurrent_requests_get_their_own_answers(service, classifier):
    photos = [jpeg_bytes(("ivory", "horn", "not_ivory")[n % 3], n) for n in range(24)]
    expected = [classifier.predict(photo).scores for photo in photos]

    def ask(photo: bytes) -> dict:
        return service.post("/predict", content=photo, headers=JPEG).json()["scores"]

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
@pytest.mark.skipif(CHROMIUM is None, reason="needs Chromium to render the page (Debian: apt-get install chromium; "
                    ".ci/run installs it)")
@pytest.mark.parametrize("page, marker, outside", [
    ("/docs", 'data-path="{path}"', set()),
    # ReDoc's sidebar shows Redocly's logo from cdn.redoc.ly; offline the image fails and hides itself.
    ("/redoc", 'data-section-id="operation/{operation_id}"', {"cdn.redoc.ly"}),
])
def test_the_api_docs_list_the_operations_in_a_browser_with_the_network_cut(classifier, tmp_path, page, marker, outside):
    with running(create_app(classifier, api_keys=["a-key"])) as url, network_cut() as (proxy, hosts):
        operations = [(path, operation["operationId"]) for path, methods in httpx.get(f"{url}/openapi.json").json()[
            "paths"].items() for operation in methods.values()]
        browser = subprocess.run([
            CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={tmp_path / 'profile'}",
            "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-extensions",
            "--disable-sync", f"--proxy-server=http://127.0.0.1:{proxy}",  # loopback goes direct; the rest, nowhere
            "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",  # and no name resolves
            "--virtual-time-budget=20000", "--dump-dom", f"{url}{page}",  # the page once its scripts have run
        ], capture_output=True, text=True, timeout=120)
    assert browser.returncode == 0, browser.stderr[-2000:]
    assert {"/predict", "/predict/batch", "/health", "/metrics"} <= {path for path, _ in operations}
    for path, operation_id in operations:
        assert marker.format(path=path, operation_id=operation_id) in browser.stdout, (page, path)
    assert {host for host in hosts if not BROWSER_HOUSEKEEPING.search(host)} <= outside


@pytest.mark.slow
def test_a_photo_over_the_pixel_limit_is_refused(classifier, tiny_run):
    small_limit = Classifier(tiny_run["model"], max_pixels=100 * 100)
    with client_of(create_app(small_limit)) as client:
        response = client.post("/predict", content=jpeg_bytes("ivory", 2, (200, 120)), headers=JPEG)
    assert response.status_code == 413 and response.json()["detail"]["category"] == "too_large"


@pytest.mark.slow
def test_a_burst_beyond_the_slots_and_the_queue_is_refused_at_once_before_its_body_is_read(classifier):
    held = Held(classifier)
    photo = jpeg_bytes("ivory", 4)
    app = create_app(held, limits=Limits(max_concurrency=1, max_queue=1))
    with running(app) as url, httpx.Client(base_url=url, timeout=30) as client, ThreadPoolExecutor(2) as pool:
        first = pool.submit(client.post, "/predict", content=photo, headers=JPEG)
        assert held.started.acquire(timeout=20)  # the one slot is scoring
        second = pool.submit(client.post, "/predict", content=photo, headers=JPEG)
        _wait_for(lambda: metric_samples(client.get("/metrics").text)[("wildvision_queue_depth", frozenset())] == 1)
        # A third request declares a 10 MB body but sends none: refused from its head alone.
        refused = response_to(raw_post(url, "/predict", {**JPEG, "Content-Length": "10000000"}))
        assert refused.status == 503 and refused.getheader("Retry-After") == "1"
        assert json.loads(refused.read())["detail"]["category"] == "overloaded"
        assert not first.done() and not second.done()
        held.release.set()
        assert first.result().status_code == 200 and second.result().status_code == 200
        assert client.post("/predict", content=photo, headers=JPEG).status_code == 200  # capacity is back


@contextmanager
def network_cut() -> Iterator[tuple[int, list[str]]]:
    """A proxy on loopback that records the host of every request sent to it and answers none: a browser told to go
    through it has no way out, and the test sees what it tried. Yields its port and the hosts, as they come."""
    listener = socket.create_server(("127.0.0.1", 0))
    hosts: list[str] = []

    def record() -> None:
        while True:
            try:
                connection, _ = listener.accept()
            except OSError:  # the listener was closed: the test is over
                return
            with connection:
                line = connection.recv(4096).split(b"\r\n")[0].decode("latin-1")  # CONNECT host:443 or GET http://host/
                if line:
                    target = line.split()[1]
                    hosts.append(target.split("://")[-1].split("/")[0].rsplit(":", 1)[0])

    thread = threading.Thread(target=record, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1], hosts
    finally:
        listener.close()
        thread.join(timeout=5)


def _wait_for(condition, seconds: float = 20) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.02)


def padded_jpeg(size: int) -> bytes:
    """A small real JPEG padded after its end marker to `size` bytes: a phone photo's weight on the wire, decoded in
    milliseconds."""
    photo = jpeg_bytes("ivory", 20)
    return photo + b"\0" * (size - len(photo))


def post_with(client: str, url: str, body: bytes, headers: dict[str, str]) -> tuple[int, str | None, str | None] | str:
    """POST `body` to /predict with one of `CLIENTS`: (status, Retry-After, error category) as that client received
    them, or the name of the error it raised instead (a reset: ConnectionResetError)."""
    try:
        if client == "urllib":
            return _post_urllib(url, body, headers)
        if client == "http.client":
            connection = http.client.HTTPConnection(*url.removeprefix("http://").split(":"), timeout=60)
            try:
                connection.request("POST", "/predict", body=body, headers=headers)
                response = connection.getresponse()
                return _answer(response.status, response.getheader("Retry-After"), response.read())
            finally:
                connection.close()
        content = _chunks(body) if client == "httpx, chunked" else body
        response = httpx.post(f"{url}/predict", content=content, headers=headers, timeout=60)
        return _answer(response.status_code, response.headers.get("Retry-After"), response.content)
    except (OSError, http.client.HTTPException, httpx.TransportError) as error:
        return type(getattr(error, "reason", error)).__name__  # urllib wraps the socket's error


def _post_urllib(url: str, body: bytes, headers: dict[str, str]) -> tuple[int, str | None, str | None]:
    request = urllib.request.Request(f"{url}/predict", data=body, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return _answer(response.status, response.headers.get("Retry-After"), response.read())
    except urllib.error.HTTPError as error:
        return _answer(error.code, error.headers.get("Retry-After"), error.read())


def _answer(status: int, retry_after: str | None, body: bytes) -> tuple[int, str | None, str | None]:
    return status, retry_after, json.loads(body)["detail"]["category"] if status >= 400 else None


@contextmanager
def full_service(classifier: Classifier, **limits) -> Iterator[tuple[str, threading.Event]]:
    """A service whose one slot is scoring and whose one queue place is taken, so that every further request is
    refused until the event it yields is set (or the block ends); the two held requests are then answered 200.
    Yields the base URL and that event."""
    held = Held(classifier)
    photo = jpeg_bytes("ivory", 4)
    app = create_app(held, limits=Limits(max_concurrency=1, max_queue=1, **limits))
    with running(app) as url, httpx.Client(base_url=url, timeout=60) as client, ThreadPoolExecutor(2) as pool:
        try:
            held_requests = [pool.submit(client.post, "/predict", content=photo, headers=JPEG)]
            assert held.started.acquire(timeout=20)  # the one slot is scoring
            held_requests.append(pool.submit(client.post, "/predict", content=photo, headers=JPEG))
            _wait_for(lambda: metric_samples(client.get("/metrics").text)[("wildvision_queue_depth", frozenset())] == 1)
            yield url, held.release
        finally:
            held.release.set()
        assert [future.result().status_code for future in held_requests] == [200, 200]


def refused_upload_counts(url: str, expected: int) -> tuple[dict[str, float], float]:
    """`wildvision_refused_uploads_total` by outcome, and `wildvision_discarded_bytes_total`, once `expected` refused
    uploads are counted: a client can read its answer before the service has read the last of its body."""

    def counts() -> tuple[dict[str, float], float]:
        samples = metric_samples(httpx.get(f"{url}/metrics").text)
        outcomes = {dict(labels)["outcome"]: value for (name, labels), value in samples.items()
                    if name == "wildvision_refused_uploads_total"}
        return outcomes, samples[("wildvision_discarded_bytes_total", frozenset())]

    _wait_for(lambda: sum(counts()[0].values()) >= expected)
    return counts()


@pytest.mark.slow
@pytest.mark.parametrize("megabytes", [5, 16])
def test_every_client_refused_in_a_burst_of_large_photos_reads_503_and_retry_after_never_a_reset(
        classifier, megabytes):
    photo = padded_jpeg(megabytes * MiB)
    burst = 3 * len(CLIENTS)
    with full_service(classifier) as (url, _), ThreadPoolExecutor(burst) as pool:
        answers = list(pool.map(lambda n: post_with(CLIENTS[n % len(CLIENTS)], url, photo, JPEG), range(burst)))
        assert answers == [(503, "1", "overloaded")] * burst
        outcomes, discarded = refused_upload_counts(url, burst)
    # Each refused upload was read to its end, or until its client, answered, hung up; the bytes are counted.
    assert sum(outcomes.values()) == burst and set(outcomes) <= {"drained", "disconnected"}
    assert 0 < discarded <= burst * len(photo)


@pytest.mark.slow
@pytest.mark.parametrize("client", CLIENTS)
def test_a_30_mib_upload_reads_its_413_and_a_large_one_with_a_wrong_key_its_401(classifier, client):
    with running(create_app(classifier, api_keys=["the-key"])) as url:  # the default limit: 20 MiB
        too_large = post_with(client, url, padded_jpeg(30 * MiB), {**JPEG, "Authorization": "Bearer the-key"})
        wrong_key = post_with(client, url, padded_jpeg(16 * MiB), {**JPEG, "Authorization": "Bearer not-the-key"})
    assert too_large == (413, None, "too_large")
    assert wrong_key == (401, None, "unauthorized")


@pytest.mark.slow
def test_an_upload_beyond_max_discard_is_answered_and_closed_at_once(classifier):
    limits = Limits(max_bytes=MiB, max_discard=4 * MiB, read_timeout=60)
    with running(create_app(classifier, limits=limits)) as url:
        sock = raw_post(url, "/predict", {**JPEG, "Content-Length": str(64 * MiB)})
        sock.settimeout(5)  # far below the 60 s a discard could wait for the body
        response = response_to(sock)
        assert response.status == 413 and response.getheader("Connection") == "close"
        response.read()
        assert sock.recv(1) == b""  # closed without waiting for the 64 MiB it would not read anyway
        assert refused_upload_counts(url, 1) == ({"over_cap": 1}, 0)


@pytest.mark.slow
def test_a_client_expecting_100_continue_is_refused_before_it_sends_and_invited_once_admitted(classifier):
    with full_service(classifier) as (url, _):
        sock = raw_post(url, "/predict", {**JPEG, "Content-Length": str(16 * MiB), "Expect": "100-continue"})
        refused = response_to(sock)  # the head alone: the answer is final, never `100 Continue`
        assert refused.status == 503 and refused.getheader("Retry-After") == "1"
        assert refused.getheader("Connection") == "close" and json.loads(refused.read())["detail"]["category"] == "overloaded"
        assert sock.recv(1) == b""  # closed by the service: the body it never invited is not waited for
        assert refused_upload_counts(url, 1) == ({"not_sent": 1}, 0)
    photo = jpeg_bytes("horn", 21)
    with running(create_app(classifier)) as url:
        sock = raw_post(url, "/predict", {**JPEG, "Content-Length": str(len(photo)), "Expect": "100-continue"})
        interim = b""
        while not interim.endswith(b"\r\n\r\n"):
            interim += sock.recv(1)
        assert interim.startswith(b"HTTP/1.1 100 ")  # admitted: invited to send the photo
        sock.sendall(photo)
        assert response_to(sock).status == 200


@pytest.mark.slow
def test_a_stalled_upload_gets_408_and_frees_its_slot(classifier):
    app = create_app(classifier, limits=Limits(max_concurrency=1, max_queue=0, read_timeout=0.5))
    with running(app) as url:
        stalled = raw_post(url, "/predict", {**JPEG, "Content-Length": "5000"}, body=b"\xff\xd8" * 50)
        response = response_to(stalled)
        assert response.status == 408 and json.loads(response.read())["detail"]["category"] == "upload_timeout"
        assert httpx.post(f"{url}/predict", content=jpeg_bytes("horn", 5), headers=JPEG).status_code == 200


@pytest.mark.slow
def test_past_the_deadline_the_answer_is_504_for_the_scored_and_the_queued(classifier):
    held = Held(classifier)
    app = create_app(held, limits=Limits(max_concurrency=1, max_queue=1, timeout=1.0))
    photo = jpeg_bytes("ivory", 6)
    with running(app) as url, httpx.Client(base_url=url, timeout=30) as client, ThreadPoolExecutor(2) as pool:
        scoring = pool.submit(client.post, "/predict", content=photo, headers=JPEG)
        assert held.started.acquire(timeout=20)
        waiting = pool.submit(client.post, "/predict", content=photo, headers=JPEG)
        for response in (scoring.result(), waiting.result()):
            assert response.status_code == 504 and response.json()["detail"]["category"] == "timeout"
        held.release.set()  # the late prediction finishes in its thread, unseen
        assert client.get("/health").status_code == 200


@pytest.mark.slow
def test_api_keys_close_everything_but_health(classifier, caplog):
    keys = ["k-9f3a", "k-second-77"]
    with client_of(create_app(classifier, api_keys=keys)) as client, caplog.at_level(logging.INFO):
        photo = jpeg_bytes("horn", 9)
        missing = client.post("/predict", content=photo, headers=JPEG)
        wrong = client.post("/predict", content=photo, headers={**JPEG, "Authorization": "Bearer k-9f3b"})
        basic = client.post("/predict", content=photo, headers={**JPEG, "Authorization": "Basic k-9f3a"})
        for refused in (missing, wrong, basic):
            assert refused.status_code == 401 and refused.headers["WWW-Authenticate"] == "Bearer"
            assert refused.json()["detail"]["category"] == "unauthorized"
        for key in keys:
            assert client.post("/predict", content=photo, headers={**JPEG, "Authorization": f"Bearer {key}"}).status_code == 200
        assert client.get("/metrics").status_code == 401
        assert client.get("/metrics", headers={"Authorization": f"Bearer {keys[0]}"}).status_code == 200
        assert client.get("/health").status_code == 200
    assert "k-9f3" not in caplog.text and "k-second" not in caplog.text


@pytest.mark.slow
def test_metrics_count_requests_photos_and_errors(classifier):
    with client_of(create_app(classifier)) as client:
        before = metric_samples(client.get("/metrics").text)
        photos = [jpeg_bytes("ivory", 10), jpeg_bytes("not_ivory", 11)]
        decided = [client.post("/predict", content=photo, headers=JPEG).json() for photo in photos]
        client.post("/predict", content=b"not a photo", headers=JPEG)
        after = metric_samples(client.get("/metrics").text)
    model = classifier.identity
    assert after[("wildvision_model_info", frozenset({"name": model.name, "version": model.version,
                                                      "precision": model.precision, "digest": model.digest}.items()))] == 1
    requests = ("wildvision_http_requests_total", frozenset({"route": "/predict", "status": "200"}.items()))
    assert after[requests] - before.get(requests, 0) == 2
    assert after[("wildvision_http_requests_total", frozenset({"route": "/predict", "status": "422"}.items()))] == 1
    assert after[("wildvision_errors_total", frozenset({"category": "not_an_image"}.items()))] == 1
    assert after[("wildvision_http_request_duration_seconds_count", frozenset({"route": "/predict"}.items()))] == 3
    for answer in decided:
        labels = frozenset({"decision": answer["decision"], "label": answer["label"] or ""}.items())
        assert after[("wildvision_photos_total", labels)] >= 1
    assert sum(value for (name, _), value in after.items() if name == "wildvision_photos_total") == 2
    counted = [dict(labels) for (name, labels), value in after.items() if name == "wildvision_photos_total" and value]
    assert all((count["label"] == "") == (count["decision"] == "allow") for count in counted), counted


@pytest.mark.slow
def test_every_request_has_an_id_and_one_json_access_line(service, caplog):
    with caplog.at_level(logging.INFO, logger="wildvision.access"):
        given = service.post("/predict", content=jpeg_bytes("horn", 12), headers={**JPEG, "X-Request-ID": "up-42"})
        made = service.get("/health")
        unsafe = service.get("/health", headers={"X-Request-ID": "a b\tc"})
    assert given.headers["X-Request-ID"] == "up-42"
    assert len(made.headers["X-Request-ID"]) == 32 and unsafe.headers["X-Request-ID"] != "a b\tc"
    lines = [json.loads(record.getMessage()) for record in caplog.records if record.name == "wildvision.access"]
    assert [line["request_id"] for line in lines] == ["up-42", made.headers["X-Request-ID"], unsafe.headers["X-Request-ID"]]
    assert lines[0]["status"] == 200 and lines[0]["path"] == "/predict" and lines[0]["decision"] == given.json()["decision"]
    assert lines[0]["bytes_in"] > 0 and lines[0]["bytes_out"] == len(given.content) and lines[0]["latency_ms"] >= 0


@pytest.mark.slow
def test_an_unexpected_error_is_a_json_500(classifier):
    with client_of(create_app(Broken(classifier))) as client:
        response = client.post("/predict", content=jpeg_bytes("horn", 13), headers={**JPEG, "X-Request-ID": "bug-1"})
    assert response.status_code == 500 and response.headers["content-type"] == "application/json"
    assert response.json()["detail"]["category"] == "internal" and response.headers["X-Request-ID"] == "bug-1"


@pytest.mark.slow
def test_a_batch_answers_each_photo_in_order_with_its_name_and_a_bad_one_fails_alone(service, classifier):
    """Every answer names its photo: a multipart part's filename (the caller's name or id), a JSON item's position."""
    photos = [jpeg_bytes("ivory", 14), b"%PDF-1.4 an invoice", jpeg_bytes("not_ivory", 15)]
    names = ["listing-81723/front.jpg", "invoice.pdf", "listing-81723/back.jpg"]
    form = service.post("/predict/batch", files=[("photos", (name, photo)) for name, photo in zip(names, photos)])
    as_json = service.post("/predict/batch", json=[base64.b64encode(photo).decode() for photo in photos] + ["%%%"])
    for response, sent in ((form, names), (as_json, ["0", "1", "2", "3"])):
        assert response.status_code == 200
        results = response.json()["results"]
        assert [result["name"] for result in results] == sent
        assert results[1] == {"error": results[1]["error"], "category": "not_an_image", "name": sent[1]}
        for result, photo in zip(results[::2], photos[::2]):
            assert result["scores"] == pytest.approx(classifier.predict(photo).scores, abs=1e-6)
    assert as_json.json()["results"][3]["category"] == "not_an_image"
    single = service.post("/predict", content=photos[0], headers=JPEG).json()
    assert "name" not in single, "a single photo's answer is about the photo sent"


@pytest.mark.slow
@pytest.mark.parametrize("case, request_kwargs, status, category", [
    ("no photos", {"json": []}, 400, "empty"),
    ("not a list", {"json": {"photo": "aGk="}}, 400, "malformed"),
    ("too many", {"json": ["aGk="] * 33}, 400, "malformed"),
    ("too many files", {"files": [("photos", (f"{n}.jpg", b"x")) for n in range(33)]}, 400, "malformed"),
    ("raw bytes", {"content": b"\xff\xd8", "headers": JPEG}, 415, "wrong_content_type"),
    ("over the byte limit", {"json": ["A" * LIMIT]}, 413, "too_large"),
])
def test_a_bad_batch_gets_a_clear_4xx(service, case, request_kwargs, status, category):
    response = service.post("/predict/batch", **request_kwargs)
    assert response.status_code == status, case
    assert response.json()["detail"]["category"] == category, case


@pytest.mark.slow
def test_a_service_with_an_index_answers_with_the_match(classifier, tmp_path):
    index = KnownItemIndex(tmp_path / "known.sqlite", classifier, create=True)
    known = jpeg_bytes("ivory", 7, (480, 384))
    index.add([known], ["case-7"])
    with client_of(create_app(classifier, index=index)) as client:
        assert client.get("/health").json()["known_items"] == 1
        repost = client.post("/predict", content=known, headers=JPEG).json()
        other = client.post("/predict", content=jpeg_bytes("horn", 8), headers={"content-type": "image/png"}).json()
    assert repost["match"]["reference"] == "case-7" and repost["match"]["hash_distance"] == 0
    assert "match" in other and other["match"] is None


@pytest.mark.slow
def test_a_known_photo_is_blocked_by_every_route_and_the_listing_reason_names_it(tiny_run, tmp_path):
    """The match decides (`MatchPolicy`: an exact re-post blocks), even where the classifier alone allows the photo."""
    model = tiny_run["model"]
    unsure = Classifier(model, operating_points={label: OperatingPoint(1.0, 1.0)
                                                 for label in Classifier(model).info.operating_points})
    index = KnownItemIndex(tmp_path / "known.sqlite", unsure, create=True)
    known = jpeg_bytes("ivory", 7, (480, 384))
    noise = Image.fromarray(np.random.default_rng(8).integers(0, 256, (384, 480, 3), dtype=np.uint8))
    other = io.BytesIO()
    noise.save(other, "JPEG")  # unlike any generated photo: plain generated photos share much of their hash
    other = other.getvalue()
    index.add([known], ["case-7"])
    encoded = [base64.b64encode(photo).decode() for photo in (other, known)]
    with client_of(create_app(unsure, index=index)) as client:
        single = client.post("/predict", content=known, headers=JPEG).json()
        batch = client.post("/predict/batch", json=encoded).json()["results"]
        listing = client.post("/predict/listing", json={"photos": encoded, "title": "a carving"}).json()
    assert (single["decision"], single["match"]["reference"]) == ("block", "case-7")
    assert [result["decision"] for result in batch] == ["allow", "block"]
    assert listing["decision"] == "block" and [photo["decision"] for photo in listing["photos"]] == ["allow", "block"]
    assert {"source": "photo 1", "label": None, "signal": "known_item", "phrase": "case-7", "score": 1.0} in listing[
        "reasons"]


@pytest.mark.slow
def test_items_added_while_the_service_runs_are_counted_and_matched(classifier, tmp_path):
    path = tmp_path / "known.sqlite"
    KnownItemIndex(path, classifier, create=True)
    seized = jpeg_bytes("ivory", 16, (480, 384))
    with client_of(create_app(classifier, index=KnownItemIndex(path, classifier))) as client:
        assert client.post("/predict", content=seized, headers=JPEG).json()["match"] is None  # items read: none
        KnownItemIndex(path, classifier).add([seized], ["case-16"])  # as `wildvision index add` would, meanwhile
        assert client.get("/health").json()["known_items"] == 1
        assert client.post("/predict", content=seized, headers=JPEG).json()["match"]["reference"] == "case-16"


@pytest.mark.parametrize("option, value, message", [
    ("--max-bytes", "-1", "must be at least 1"),
    ("--max-bytes", "0", "must be at least 1"),
    ("--port", "70000", "1-65535"),
    ("--max-concurrency", "0", "must be at least 1"),
    ("--max-queue", "-1", "must be at least 0"),
    ("--timeout", "0", "positive number of seconds"),
    ("--read-timeout", "nan", "positive number of seconds"),
    ("--grace-period", "soon", "not a number of seconds"),
    ("--max-pixels", "0", "must be at least 1"),
    ("--max-discard", "-5", "must be at least 1"),
])
def test_serve_refuses_nonsense_limits(option, value, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["serve", option, value])
    assert exit_.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.slow
def test_serve_refuses_an_empty_api_key_file(tiny_run, tmp_path, capsys):
    empty = tmp_path / "keys.txt"
    empty.write_text("# rotated out\n\n")
    assert main(["--model", str(tiny_run["model"]), "serve", "--api-key-file", str(empty)]) == 2
    assert "holds no API key" in capsys.readouterr().err


@pytest.mark.slow
def test_the_serve_command_finishes_a_request_in_flight_on_sigterm_and_exits_0(tiny_run, tmp_path):
    port = free_port()
    (tmp_path / "keys.txt").write_text("# the platform's key\nsecret-1\n")
    command = [sys.executable, "-m", "wildvision", "--model", str(tiny_run["model"]), "serve", "--port", str(port),
               "--api-key-file", str(tmp_path / "keys.txt")]
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    url, key = f"http://127.0.0.1:{port}", {"Authorization": "Bearer secret-1"}
    try:
        _wait_for(lambda: _answers(f"{url}/health"), seconds=60)
        photo = jpeg_bytes("ivory", 17)
        in_flight = raw_post(url, "/predict", {**JPEG, **key, "Content-Length": str(len(photo))}, body=photo[:100])
        time.sleep(0.5)  # the head is in: the request is in flight, waiting for the rest of its body
        process.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        in_flight.sendall(photo[100:])
        response = response_to(in_flight)
        assert response.status == 200 and json.loads(response.read())["decision"] in ("allow", "review", "block")
        stdout, stderr = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, stderr
    access = [json.loads(line) for line in stdout.splitlines()]
    assert access[-1]["path"] == "/predict" and access[-1]["status"] == 200
    assert "secret-1" not in stdout + stderr


def _answers(url: str) -> bool:
    try:
        return httpx.get(url).status_code == 200
    except httpx.TransportError:
        return False


def test_importing_wildvision_does_not_import_the_web_stack():
    script = ("import sys, wildvision, wildvision.cli; "
              "print(sorted({'fastapi', 'uvicorn', 'starlette', 'prometheus_client'} & set(sys.modules)))")
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


# The client: `wildvision.Client` is `Classifier`'s surface over HTTP.


@pytest.mark.slow
def test_the_client_answers_as_the_classifier_does(classifier, tmp_path):
    photos = [jpeg_bytes(("ivory", "horn", "not_ivory")[n % 3], 30 + n) for n in range(5)]
    (tmp_path / "listing.jpg").write_bytes(photos[0])
    with running(create_app(classifier)) as url, Client(url) as client:
        for source in (photos[0], tmp_path / "listing.jpg", str(tmp_path / "listing.jpg"), io.BytesIO(photos[0])):
            assert_same(client.predict(source), classifier.predict(photos[0]))
        as_pixels = Image.open(io.BytesIO(photos[1]))
        assert_same(client.predict(as_pixels), classifier.predict(as_pixels))  # sent as PNG: the same pixels
        for remote, local in zip(client.predict_batch(photos, batch_size=2), classifier.predict_batch(photos),
                                 strict=True):
            assert_same(remote, local)
        with pytest.raises(ImageLoadError) as unreadable:
            client.predict(b"%PDF-1.4 an invoice")
        assert unreadable.value.category == "not_an_image"
        with pytest.raises(ImageLoadError) as in_batch:
            client.predict_batch([photos[0], photos[1], b"%PDF-1.4 an invoice"], batch_size=2)
        assert in_batch.value.category == "not_an_image" and in_batch.value.source.startswith("photo 2 (")


@pytest.mark.slow
def test_the_client_takes_a_calls_own_thresholds_as_the_classifier_does(classifier):
    """Switching from `Classifier` to `Client` is one line, for code that passes thresholds per call too."""
    prohibited = next(iter(classifier.info.operating_points))
    strict = {prohibited: OperatingPoint(review=0.0, block=0.0)}
    photos = [jpeg_bytes("not_ivory", 40), jpeg_bytes("ivory", 41)]
    with running(create_app(classifier)) as url, Client(url) as client:
        assert_same(client.predict(photos[0], operating_points=strict),
                    classifier.predict(photos[0], operating_points=strict))
        assert client.predict(photos[0], operating_points=strict).decision == "block"
        for remote, local in zip(client.predict_batch(photos, operating_points=strict),
                                 classifier.predict_batch(photos, operating_points=strict), strict=True):
            assert_same(remote, local)
        assert_same(client.predict(photos[0]), classifier.predict(photos[0]))  # the next call: the service's own
        for refused in ({"not_ivory": OperatingPoint(0.1, 0.2)}, {"pangolin": OperatingPoint(0.1, 0.2)}):
            with pytest.raises(OperatingPointError) as remote_error:
                client.predict(photos[0], operating_points=refused)
            with pytest.raises(OperatingPointError) as local_error:
                classifier.predict(photos[0], operating_points=refused)
            assert str(remote_error.value) == str(local_error.value)
            with pytest.raises(OperatingPointError):
                client.predict_batch(photos, operating_points=refused)


def test_the_client_refuses_a_batch_answer_that_names_another_photo(monkeypatch):
    answer = json.dumps({"results": [{"name": "1", "error": "x", "category": "corrupt"}]}).encode()
    monkeypatch.setattr(Client, "_call", lambda self, path, body, content_type, request_id: _Answer(200, None, answer))
    with pytest.raises(ServiceError, match="the answer for photo 0 names photo '1'"):
        Client("http://scorer.internal:8000").predict_batch([b"photo"])


def assert_same(remote: Prediction, local: Prediction) -> None:
    assert type(remote) is Prediction
    assert remote.scores == pytest.approx(local.scores, abs=1e-6)
    assert {**remote.to_dict(), "scores": None} == {**local.to_dict(), "scores": None}


@pytest.mark.slow
def test_the_client_retries_a_503_under_one_request_id_until_the_service_has_room(classifier, caplog):
    with caplog.at_level(logging.INFO, logger="wildvision.access"), full_service(classifier) as (url, release), \
            ThreadPoolExecutor(1) as pool:
        client = Client(url, attempts=10, backoff=0.1)
        answer = pool.submit(client.predict, jpeg_bytes("horn", 40), request_id="listing-40")
        _wait_for(lambda: statuses_of("listing-40", caplog))  # refused at least once
        release.set()
        assert isinstance(answer.result(timeout=60), Prediction)
    statuses = statuses_of("listing-40", caplog)
    assert statuses[-1] == 200 and set(statuses[:-1]) == {503} and len(statuses) >= 2


def statuses_of(request_id: str, caplog) -> list[int]:
    lines = [json.loads(record.getMessage()) for record in caplog.records if record.name == "wildvision.access"]
    return [line["status"] for line in lines if line["request_id"] == request_id]


@pytest.mark.slow
def test_the_client_gives_up_after_its_attempts_with_the_last_answer_and_the_request_id(classifier):
    photo = padded_jpeg(5 * MiB)
    with full_service(classifier) as (url, _):
        with pytest.raises(ServiceError) as exhausted:
            Client(url, attempts=2, backoff=0).predict(photo, request_id="listing-41")
        with pytest.raises(ServiceError) as too_long_a_wait:  # the service asks for 1 s, more than this client waits
            Client(url, max_wait=0.5).predict(photo)
    assert (exhausted.value.status, exhausted.value.category, exhausted.value.attempts) == (503, "overloaded", 2)
    assert exhausted.value.request_id == "listing-41"
    assert "gave up after 2 attempt(s)" in str(exhausted.value) and "listing-41" in str(exhausted.value)
    assert too_long_a_wait.value.attempts == 1 and "over max_wait" in str(too_long_a_wait.value)


@pytest.mark.slow
def test_the_client_does_not_retry_what_retrying_cannot_mend_and_names_what_it_could_not_reach(classifier):
    with running(create_app(classifier, api_keys=["the-key"])) as url:
        with pytest.raises(ServiceError) as refused:
            Client(url, api_key="not-the-key", backoff=0).predict(jpeg_bytes("horn", 42))
        assert Client(url, api_key="the-key").predict(jpeg_bytes("horn", 42)).top_label
    assert (refused.value.status, refused.value.category, refused.value.attempts) == (401, "unauthorized", 1)
    with pytest.raises(ServiceError) as unreachable:
        Client(f"http://127.0.0.1:{free_port()}", attempts=2, backoff=0.01).predict(jpeg_bytes("horn", 42))
    assert (unreachable.value.status, unreachable.value.category, unreachable.value.attempts) == (None, "connection", 2)


def test_retry_waits_honour_retry_after_and_spread_clients_apart():
    rng = random.Random(0)
    first = [_retry_delay(1, 1.0, 0.5, rng) for _ in range(200)]
    third = [_retry_delay(3, None, 0.5, rng) for _ in range(200)]
    assert 1.0 <= min(first) and max(first) <= 1.5 and len(set(first)) == 200  # never sooner; never in step
    assert 0 <= min(third) and 1.5 < max(third) <= 2.0  # the range doubles each retry: 0.5 s, 1 s, 2 s


@dataclass(frozen=True)
class _Line:
    text: str
    box: tuple[int, int, int, int]


@dataclass(frozen=True)
class _Evidence:
    lines: tuple[_Line, ...]


@dataclass(frozen=True)
class _Result:
    label: str
    evidence: _Evidence | None = None


def test_answers_become_dataclasses_nested_ones_included_from_their_fields():
    sent = {"label": "ivory", "evidence": {"lines": [{"text": "IVORY", "box": [1, 2, 3, 4]}]}, "match": None}
    assert _from_json(_Result, sent) == _Result("ivory", _Evidence((_Line("IVORY", (1, 2, 3, 4)),)))
    assert _from_json(_Result, {"label": "horn", "evidence": None}) == _Result("horn")
    assert _from_json(_Result, {"label": "horn"}) == _Result("horn")  # a service without the field: its default


@pytest.mark.slow
def test_a_service_that_reads_text_answers_with_the_words_and_decides_listings_by_their_worst_photo(tiny_run):
    """`serve --read-text`: every answer carries what was read; /predict/listing and `Client.predict_listing` decide
    a listing by the photo whose words name the product, as `Classifier.predict_listing` does."""
    pytest.importorskip("rapidocr_onnxruntime", reason="reading text needs the text extra")
    skip_without_font("en")
    # Image thresholds no score reaches: the tiny model, trained afresh each session on generated photos, scores a
    # caption's pixels at random (its own thresholds sit near 0), and this test is about the words, not the image.
    prohibited = Classifier(tiny_run["model"]).info.operating_points
    unreachable = {label: OperatingPoint(review=1.0, block=1.0) for label in prohibited}
    reader = Classifier(tiny_run["model"], read_text=True, threads=1, operating_points=unreachable)
    plain = make_photo("not_ivory", 3, size=(480, 360))
    promo = caption(make_photo("not_ivory", 4, size=(480, 360)), "Genuine rhino horn cup", "en")[0]
    with running(create_app(reader)) as url, Client(url) as client:
        answer = client.predict(promo)
        assert [match.label for match in answer.text.matches] == ["rhino_horn"] and answer.decision == "review"
        listing = client.predict_listing([plain, promo, plain])
        local = reader.predict_listing([plain, promo, plain])
        assert (listing.decision, listing.deciding_photo, listing.labels) == ("review", 1, ("rhino_horn",))
        assert (listing.decision, listing.deciding_photo, listing.labels) == (
            local.decision, local.deciding_photo, local.labels)
        assert listing.photos[1].text == local.photos[1].text
        with pytest.raises(ImageLoadError) as unreadable:
            client.predict_listing([plain, b"%PDF-1.4 an invoice"])
        assert unreadable.value.category == "not_an_image" and "photo 1" in unreadable.value.reason
