"""`wildvision.Client`: score photos with a `wildvision serve` service, with `Classifier`'s surface and answers.

    classifier = Client("http://scorer.internal:8000", api_key=key)  # instead of Classifier(): the one line to change
    classifier.predict("listing.jpg").decision
    classifier.predict_batch(["a.jpg", "b.jpg"])

`predict` and `predict_batch` return the library's `Prediction`s and raise `ImageLoadError` for a photo the service
could not read, as `Classifier`'s do. A busy or restarting service (503, 502, 504, 408, 429, no connection) is asked
again, after a jittered exponential back-off that never comes sooner than the service's `Retry-After`; after
`attempts` tries, or a refusal that retrying cannot mend (401, 415, 500), the client raises `ServiceError`. Every
request carries a request id (`X-Request-ID`: yours, or one made per call and kept across its retries), which the
service logs with its answer and which every `ServiceError` names.

Standard library only (`http.client`): the inference install stays numpy, Pillow and onnxruntime, and a platform
calling the service needs nothing more than `pip install wildvision`. httpx would add a stack of packages for
connection pooling and HTTP/2 that one keep-alive connection per thread makes unnecessary here.
"""

from __future__ import annotations

import dataclasses
import email.utils
import http.client
import io
import json
import logging
import os
import random
import threading
import time
import types
import typing
import uuid
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Union
from urllib.parse import urlencode, urlsplit

import numpy as np
from PIL import Image

from wildvision.classifier import ListingPrediction, Prediction
from wildvision.errors import WildvisionError
from wildvision.images import ERROR_CATEGORIES, ImageLoadError, ImageSource, describe_source, load_image
from wildvision.model_info import OperatingPoint, OperatingPointError

__all__ = ["Client", "ServiceError"]

log = logging.getLogger("wildvision.client")
# Answers that say "not now" rather than "not this": the same request may well succeed later. Scoring changes nothing
# on the service, so a request whose answer was lost (no connection, reset) is safe to send again too.
_RETRIED = frozenset({408, 429, 502, 503, 504})


class ServiceError(WildvisionError):
    """The service refused or failed a request, or could not be reached.

    `status` is the HTTP status (None when no answer came), `category` the service's one word for it (`overloaded`,
    `unauthorized`, ...; `connection` when no answer came), `reason` its words, `request_id` the id under which the
    service logged it, `attempts` how many times the request was sent."""

    def __init__(self, reason: str, *, status: int | None, category: str, request_id: str, attempts: int = 1) -> None:
        answer = f"{status} {category}" if status else category
        super().__init__(f"{answer}: {reason} (request id {request_id}, {attempts} attempt(s))")
        self.reason, self.status, self.category = reason, status, category
        self.request_id, self.attempts = request_id, attempts


@dataclass(frozen=True)
class _Answer:
    status: int
    retry_after: float | None  # seconds, from the Retry-After header
    body: bytes


class Client:
    """A `wildvision serve` service at `url`, called like a `Classifier`. Safe to share across threads: each thread
    keeps its own keep-alive connection.

    `timeout` bounds each attempt (seconds without progress on the connection); `attempts` is the most times one
    request is sent; `backoff` the first retry's jitter range in seconds, doubling each retry; `max_wait` the longest
    pause between attempts: a service asking for longer (`Retry-After`) gets a `ServiceError` at once instead.
    """

    def __init__(self, url: str, *, api_key: str | None = None, timeout: float = 60.0, attempts: int = 4,
                 backoff: float = 0.5, max_wait: float = 30.0) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"url must be http:// or https:// and name a host, got {url!r}")
        if attempts < 1 or timeout <= 0 or backoff < 0 or max_wait < 0:
            raise ValueError("attempts must be at least 1, timeout positive, backoff and max_wait not negative")
        self.url = url.rstrip("/")
        self._parts, self._host = parts, parts.hostname
        self._auth = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.timeout, self.attempts, self.backoff, self.max_wait = timeout, attempts, backoff, max_wait
        self._local = threading.local()
        # Weak: a connection goes (and its socket closes) with its thread; close() reaches the living ones.
        self._connections: weakref.WeakSet[http.client.HTTPConnection] = weakref.WeakSet()
        self._lock = threading.Lock()

    def predict(self, image: ImageSource, *, operating_points: Mapping[str, OperatingPoint] | None = None,
                request_id: str | None = None) -> Prediction:
        """Score one photo given as a path, bytes, a binary file, a PIL image or a numpy array (the last two are sent
        as lossless PNG). `operating_points` replaces the service's thresholds for this call only, as
        `Classifier.predict`'s does. Raises `ImageLoadError` when the service cannot read it, `OperatingPointError`
        for thresholds it refuses, `ServiceError` otherwise."""
        source = describe_source(image)
        path = _with_points("/predict", operating_points)
        try:
            answer = self._call(path, _photo_bytes(image, source), "application/octet-stream", request_id)
        except ServiceError as error:
            if error.category in ERROR_CATEGORIES:  # the photo's fault: as Classifier.predict would say
                raise ImageLoadError(source, error.reason, error.category) from error  # type: ignore[arg-type]
            _refused_points(error)
            raise
        return _from_json(Prediction, json.loads(answer.body))

    def predict_batch(self, images: Iterable[ImageSource], *, batch_size: int = 16,
                      operating_points: Mapping[str, OperatingPoint] | None = None,
                      request_id: str | None = None) -> list[Prediction]:
        """Score several photos, `batch_size` to a request (at most the service's `--max-batch`), with
        `operating_points` for these calls as `predict`; a photo the service cannot read raises an `ImageLoadError`
        naming its position and source, as `Classifier.predict_batch` does. Each photo is sent named by its position,
        and every answer must carry that name back: an answer that names another photo raises `ServiceError` rather
        than being taken for the wrong photo's."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        sources, photos = _numbered_photos(images)
        path = _with_points("/predict/batch", operating_points)
        predictions: list[Prediction] = []
        for start in range(0, len(photos), batch_size):
            form, content_type = _multipart(photos[start : start + batch_size], first=start)
            try:
                answer = self._call(path, form, content_type, request_id)
            except ServiceError as error:
                _refused_points(error)
                raise
            results = json.loads(answer.body)["results"]
            for position, result in enumerate(results, start):
                if result.get("name", str(position)) != str(position):  # a service too old to name answers: by order
                    raise ServiceError(f"the answer for photo {position} names photo {result['name']!r}",
                                       status=answer.status, category="mismatched_answer", request_id=request_id or "(made per call)",
                                       attempts=1)
                if "error" in result:
                    raise ImageLoadError(f"photo {position} ({sources[position]})", result["error"], result["category"])
                predictions.append(_from_json(Prediction, result))
        return predictions

    def predict_listing(
        self, images: Iterable[ImageSource] = (), *, title: str | None = None, description: str | None = None,
        operating_points: Mapping[str, OperatingPoint] | None = None, request_id: str | None = None,
    ) -> ListingPrediction:
        """Decide a listing from its photos and its seller's words in one request (at most the service's
        `--max-batch` photos), as `Classifier.predict_listing` decides; `operating_points` as for `predict`. A photo
        the service cannot read raises an `ImageLoadError` naming its position."""
        _, photos = _numbered_photos(images)
        for name, value in (("title", title), ("description", description)):
            if value is not None and not isinstance(value, str):
                raise TypeError(f"a listing's {name} must be text (str), got {type(value).__name__}")
        if not photos and not (title or description):
            raise ValueError("a listing needs at least one photo, or a title or description")
        form, content_type = _multipart(photos, {"title": title, "description": description})
        try:
            answer = json.loads(self._call(_with_points("/predict/listing", operating_points), form, content_type,
                                           request_id).body)
        except ServiceError as error:
            if error.category in ERROR_CATEGORIES:
                raise ImageLoadError(error.reason.split(":")[0], error.reason, error.category) from error  # type: ignore[arg-type]
            _refused_points(error)
            raise
        return _from_json(ListingPrediction, answer)

    def close(self) -> None:
        """Close every thread's connection, once no call is in flight (a later call opens a new one)."""
        with self._lock:
            for connection in list(self._connections):
                connection.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _call(self, path: str, body: bytes, content_type: str, request_id: str | None) -> _Answer:
        """POST `body`, sent again while the answer says "not now" and attempts are left; a 2xx answer, or
        `ServiceError`."""
        request_id = request_id or uuid.uuid4().hex  # one id for the call: its retries share it in the service's log
        headers = {"Content-Type": content_type, "X-Request-ID": request_id, **self._auth}
        started = time.monotonic()
        for attempt in range(1, self.attempts + 1):
            try:
                answer = self._send(path, body, headers)
            except (OSError, http.client.HTTPException) as error:  # refused, reset, timed out: no answer
                failure = ServiceError(f"no answer from {self.url}{path} ({error!r})", status=None,
                                       category="connection", request_id=request_id, attempts=attempt)
                retry_after = None
            else:
                log.debug("POST %s %d request_id=%s attempt=%d", path, answer.status, request_id, attempt)
                if answer.status < 300:
                    return answer
                failure = _refusal(answer, request_id, attempt)
                if answer.status not in _RETRIED:
                    raise failure
                retry_after = answer.retry_after
            wait = _retry_delay(attempt, retry_after, self.backoff)
            if attempt == self.attempts or wait > self.max_wait:
                why = "" if attempt == self.attempts else f" (the next would wait {wait:.0f} s, over max_wait)"
                raise ServiceError(f"gave up after {attempt} attempt(s) in {time.monotonic() - started:.1f} s{why}; "
                                   f"last: {failure.reason}", status=failure.status, category=failure.category,
                                   request_id=request_id, attempts=attempt) from failure
            log.info("%s; retrying in %.1f s (attempt %d of %d)", failure, wait, attempt + 1, self.attempts)
            time.sleep(wait)
        raise AssertionError("unreachable: the last attempt returns or raises")

    def _send(self, path: str, body: bytes, headers: dict[str, str]) -> _Answer:
        connection = self._connection()
        reused = connection.sock is not None
        try:
            return self._exchange(connection, path, body, headers)
        except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
            if not reused:
                raise
        # The service closed the idle connection (uvicorn does after 5 s) as this request went out: not a failure of
        # the service, so sent again at once on a new connection rather than after a back-off.
        return self._exchange(connection, path, body, headers)

    def _exchange(self, connection: http.client.HTTPConnection, path: str, body: bytes,
                  headers: dict[str, str]) -> _Answer:
        try:
            connection.request("POST", self._parts.path.rstrip("/") + path, body=body, headers=headers)
            response = connection.getresponse()
            answer = _Answer(response.status, _seconds(response.getheader("Retry-After")), response.read())
        except BaseException:
            connection.close()  # half a request or answer leaves the connection unusable; the next call reopens it
            raise
        if response.will_close:
            connection.close()
        return answer

    def _connection(self) -> http.client.HTTPConnection:
        connection = getattr(self._local, "connection", None)
        if connection is None:  # http.client reopens a closed connection by itself on the next request
            kind = http.client.HTTPSConnection if self._parts.scheme == "https" else http.client.HTTPConnection
            connection = kind(self._host, self._parts.port, timeout=self.timeout)
            self._local.connection = connection
            with self._lock:
                self._connections.add(connection)
        return connection


def _retry_delay(attempt: int, retry_after: float | None, backoff: float, rng: random.Random | None = None) -> float:
    """Seconds to wait after failed attempt `attempt` (1, 2, ...): never sooner than the service's `retry_after`,
    plus a random share of `backoff x 2^(attempt-1)` ("full jitter"), so that clients refused together do not all
    come back together, and each retry waits longer."""
    spread = backoff * 2 ** (attempt - 1)
    return (retry_after or 0.0) + (rng or random).uniform(0, spread)


def _seconds(retry_after: str | None) -> float | None:
    """A Retry-After header (seconds, or an HTTP date) in seconds from now."""
    if not retry_after:
        return None
    if retry_after.strip().isdigit():
        return float(retry_after)
    try:
        when = email.utils.parsedate_to_datetime(retry_after)
    except (TypeError, ValueError):  # unparseable: as if absent, the back-off alone decides
        return None
    return max(0.0, when.timestamp() - time.time())


def _refusal(answer: _Answer, request_id: str, attempt: int) -> ServiceError:
    """The service's error answer (`{"detail": {"error", "category"}}`) as a `ServiceError`; a proxy's by its status."""
    try:
        detail = json.loads(answer.body)["detail"]
        reason, category = detail["error"], detail["category"]
    except (ValueError, KeyError, TypeError):  # not the service's JSON (a proxy's page, a routing 404)
        reason, category = answer.body[:200].decode("utf-8", "replace") or "no details", f"http_{answer.status}"
    return ServiceError(reason, status=answer.status, category=category, request_id=request_id, attempts=attempt)


def _numbered_photos(images: Iterable[ImageSource]) -> tuple[list[str], list[bytes]]:
    """Each photo's source (for messages) and bytes; one that cannot be read is named by its position and source."""
    images = list(images)
    sources = [describe_source(image) for image in images]
    photos = [_photo_bytes(image, f"photo {position} ({source})")
              for position, (image, source) in enumerate(zip(images, sources))]
    return sources, photos


def _photo_bytes(image: ImageSource, source: str) -> bytes:
    """What to send for `image`: a file's or buffer's bytes as they are (the service decodes them exactly as the
    library would); a PIL image or array as PNG, lossless, so the service sees the same pixels."""
    if isinstance(image, (bytes, bytearray)):
        return bytes(image)
    if isinstance(image, (str, os.PathLike)):
        try:
            return Path(image).read_bytes()
        except OSError as error:
            raise ImageLoadError(source, f"cannot read file ({error.strerror or error})", "unreadable") from None
    if isinstance(image, (Image.Image, np.ndarray)):
        buffer = io.BytesIO()
        load_image(image).save(buffer, "PNG")
        return buffer.getvalue()
    if hasattr(image, "read"):
        return image.read()
    raise ImageLoadError(source, f"unsupported input type {type(image).__name__}; give a path, bytes, a file, a PIL "
                         "image or an array", "unsupported_input")


def _multipart(
    photos: list[bytes], fields: Mapping[str, str | None] | None = None, *, first: int = 0
) -> tuple[bytes, str]:
    """A multipart form of photo files, as /predict/batch takes it (raw bytes, a third smaller than base64 in JSON),
    and text `fields` (a listing's title and description; None leaves a field out). Each file is named by its position
    in the whole call (from `first`), which the service echoes in its answer."""
    boundary = uuid.uuid4().hex
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="photos"; filename="{number}"\r\n'
             f"Content-Type: application/octet-stream\r\n\r\n".encode() + photo + b"\r\n"
             for number, photo in enumerate(photos, first)]
    parts += [f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n'
              f"Content-Type: text/plain; charset=utf-8\r\n\r\n{value}\r\n".encode()
              for name, value in (fields or {}).items() if value is not None]
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def _with_points(path: str, operating_points: Mapping[str, OperatingPoint] | None) -> str:
    """`path` with a call's own thresholds in the query, as the service reads them (JSON, the thresholds file's
    format); `path` itself when the call has none."""
    if operating_points is None:
        return path
    document = {label: {"review": point.review, "block": point.block} for label, point in operating_points.items()}
    return f"{path}?{urlencode({'operating_points': json.dumps(document)})}"


def _refused_points(error: ServiceError) -> None:
    """Thresholds the service refused raise the `OperatingPointError` that `Classifier` raises for them."""
    if error.category == "bad_operating_points":
        raise OperatingPointError(error.reason) from error


def _from_json(kind: Any, value: Any) -> Any:
    """Parsed JSON `value` as type `kind`: a dataclass from its fields' values (nested dataclasses too), lists and
    tuples item by item, anything else as it is. The fields come from the dataclass, so a field added to `Prediction`
    arrives without a change here; what the service sends beyond them (`match`) is left out."""
    if isinstance(kind, type) and dataclasses.is_dataclass(kind) and isinstance(value, dict):
        hints = typing.get_type_hints(kind)
        return kind(**{field.name: _from_json(hints[field.name], value[field.name])
                       for field in dataclasses.fields(kind) if field.name in value})
    origin, arguments = typing.get_origin(kind), typing.get_args(kind)
    if origin in (Union, types.UnionType):  # Optional[X], X | None: the member the value fits
        members = [member for member in arguments if isinstance(member, type) and dataclasses.is_dataclass(member)]
        return _from_json(members[0], value) if members and isinstance(value, dict) else value
    if origin in (list, tuple) and isinstance(value, list):
        items = arguments[:1] * len(value) if origin is list or arguments[-1:] == (...,) else arguments
        return origin(_from_json(item, element) for item, element in zip(items, value))
    if origin is dict and isinstance(value, dict):
        return {key: _from_json(arguments[1], element) for key, element in value.items()}
    return value
