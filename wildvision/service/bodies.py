"""Request bodies: a photo's bytes, a batch's named photos (a multipart form or a JSON list of base64 strings),
bounded as they arrive; a call's own thresholds from the query."""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from typing import AsyncIterator, Awaitable, Callable, Mapping, Optional

from fastapi import Query, Request
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

from wildvision.classifier import Classifier, PreparedPhoto
from wildvision.images import ImageLoadError
from wildvision.scorer import Scorer
from wildvision.model_info import OperatingPoint, OperatingPointError, operating_points_of
from wildvision.service.schemas import ErrorOut, _error

_IMAGE_TYPES = ("image/", "application/octet-stream")

_BATCH_TYPES = ("multipart/form-data", "application/json")

# Why a photo could not be scored -> HTTP status: the client's request was at fault in every case (4xx).
_STATUS_BY_CATEGORY = {"empty": 400, "too_large": 413, "not_an_image": 422, "corrupt": 422}

Points = Optional[Mapping[str, OperatingPoint]]  # a call's own thresholds; None: the service's

# A call's own thresholds, as `Classifier.predict(operating_points=...)` takes them: JSON in the query, in the
# thresholds file's format, so that `Client` takes what `Classifier` takes.
_OPERATING_POINTS = Query(None, description='this call\'s thresholds instead of the service\'s, as JSON: '
                          '{"ivory": {"review": 0.8, "block": 0.99}}; labels left out keep the service\'s',
                          examples=['{"ivory": {"review": 0.8, "block": 0.99}}'])


_BINARY_BODY = {"schema": {"type": "string", "format": "binary"}}

_BATCH_BODIES = {  # for the OpenAPI schema: the route reads its body itself, to bound it
    "multipart/form-data": {"schema": {"type": "object", "properties": {
        "photos": {"type": "array", "items": {"type": "string", "format": "binary"}}}}},
    "application/json": {"schema": {"type": "array", "items": {"type": "string", "format": "byte"}}},
}


def _call_points(classifier: Classifier, text: str | None) -> Points:
    """A request's own thresholds (`operating_points` in the query), checked as `Classifier` checks them; None when
    it sends none. Bad thresholds are the caller's error (422 `bad_operating_points`), refused before the body is
    read."""
    if text is None:
        return None
    try:
        document = json.loads(text)
    except json.JSONDecodeError as error:
        raise _error(422, "bad_operating_points", f"operating_points: not JSON ({error})") from None
    try:
        return classifier.info.checked_operating_points(operating_points_of(document, "operating_points"))
    except OperatingPointError as error:
        raise _error(422, "bad_operating_points", str(error)) from None


def _require_content_type(request: Request, accepted: tuple[str, ...], hint: str) -> None:
    content_type = request.headers.get("content-type", "")
    if not content_type.startswith(accepted):
        raise _error(415, "wrong_content_type", f"{hint}, not {content_type or 'no Content-Type'}")


async def _capped(request: Request, max_bytes: int) -> AsyncIterator[bytes]:
    """The body's chunks, refused with 413 as soon as it is known to be over `max_bytes`."""
    too_large = _error(413, "too_large", f"the request body is over the {max_bytes}-byte limit")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise too_large
    received = 0
    async for chunk in request.stream():  # a chunked upload has no Content-Length: count as it arrives
        received += len(chunk)
        if received > max_bytes:
            raise too_large
        yield chunk


async def _joined(chunks: AsyncIterator[bytes]) -> bytes:
    return b"".join([chunk async for chunk in chunks])


@dataclass(frozen=True)
class _Words:
    """A listing's own words, as sent with its photos."""

    title: str | None = None
    description: str | None = None


@dataclass(frozen=True)
class _Sent:
    """A batch's or listing's photos, each with the name it was sent under and its bytes or, where the JSON item is
    not base64, that item's error; and a listing's words."""

    photos: list[tuple[str, bytes | ErrorOut]]
    words: _Words


def _batch_reader(
    request: Request, max_batch: int, *, listing: bool
) -> Callable[[AsyncIterator[bytes]], Awaitable[_Sent]]:
    """The photos of a batch or listing body and, for a listing, its title and description. A multipart part is named
    by its filename (the caller's name or id for it), a JSON item, or a part without a filename, by its position ("0",
    "1", ...): every answer says which photo it is about."""

    async def read(chunks: AsyncIterator[bytes]) -> _Sent:
        if request.headers["content-type"].startswith("multipart/form-data"):
            sent = await _form_parts(request, chunks, max_batch)
        else:
            sent = _json_body(await _joined(chunks), max_batch, listing=listing)
        if not listing and (sent.words.title or sent.words.description):
            raise _error(400, "malformed", "title and description are a listing's: send them to /predict/listing")
        if not sent.photos and not (sent.words.title or sent.words.description):
            raise _error(400, "empty", "the listing has no photo, title or description" if listing
                         else "the batch holds no photos")
        return sent

    return read


async def _form_parts(request: Request, chunks: AsyncIterator[bytes], max_batch: int) -> _Sent:
    """Every file part of a multipart form, in order, with its filename, and its `title` and `description` fields
    (Starlette's parser: parts over 1 MiB spool to disk)."""
    try:
        form = await MultiPartParser(request.headers, chunks, max_files=max_batch, max_fields=max_batch).parse()
    except MultiPartException as error:
        raise _error(400, "malformed", f"not a usable multipart form: {error.message}") from None
    try:
        parts = [part for _, part in form.multi_items() if isinstance(part, UploadFile)]
        photos: list[tuple[str, bytes | ErrorOut]] = [(part.filename or str(position), await part.read())
                                                      for position, part in enumerate(parts)]
        words = {name: value for name, value in form.multi_items() if isinstance(value, str)}
        return _Sent(photos, _Words(words.get("title"), words.get("description")))
    finally:
        await form.close()


def _json_body(body: bytes, max_batch: int, *, listing: bool) -> _Sent:
    """A JSON list of base64-encoded photos or, for a listing, also an object with `photos`, `title`, `description`."""
    try:
        value = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise _error(400, "malformed", f"not JSON: {error}") from None
    if listing and isinstance(value, dict):
        unknown = sorted(set(value) - {"photos", "title", "description"})
        words = [value.get(name) for name in ("title", "description")]
        if unknown or not all(word is None or isinstance(word, str) for word in words):
            raise _error(400, "malformed", "a listing is a JSON object of photos (a list of base64-encoded photos), "
                         f"title and description (text){f'; unknown: {unknown}' if unknown else ''}")
        return _Sent(_numbered(_json_photos(value.get("photos", []), max_batch)), _Words(*words))
    return _Sent(_numbered(_json_photos(value, max_batch)), _Words())


def _numbered(photos: list[bytes | ErrorOut]) -> list[tuple[str, bytes | ErrorOut]]:
    """JSON items named by their position: "0", "1", ..."""
    return [(str(position), photo) for position, photo in enumerate(photos)]


def _json_photos(items: object, max_batch: int) -> list[bytes | ErrorOut]:
    if not isinstance(items, list):
        raise _error(400, "malformed", "send a JSON list of base64-encoded photos")
    if len(items) > max_batch:
        raise _error(400, "malformed", f"{len(items)} photos; at most {max_batch} per batch")
    return [_base64_photo(item) for item in items]


def _base64_photo(item: object) -> bytes | ErrorOut:
    try:
        return base64.b64decode(item, validate=True) if isinstance(item, str) else ErrorOut(
            error=f"expected a base64-encoded photo (a JSON string), got {json.dumps(item)[:40]}",
            category="not_an_image")
    except binascii.Error as error:
        return ErrorOut(error=f"not valid base64 ({error})", category="not_an_image")


def _prepared_or_error(scorer: Scorer, body: bytes) -> PreparedPhoto | ErrorOut:
    """One photo of a batch, ready for the model, or why it cannot be scored (which fails only that photo)."""
    try:
        return scorer.prepare(body)
    except ImageLoadError as error:
        return ErrorOut(error=error.reason, category=error.category)
