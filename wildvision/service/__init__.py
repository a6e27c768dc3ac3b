"""`wildvision serve`: score uploaded photos over HTTP with one shared `Classifier` (FastAPI; `wildvision[serve]`).

A photo is POSTed as the raw request body (`Content-Type: image/jpeg`, `image/png`, ... or
`application/octet-stream`), or several to `/predict/batch` (a multipart form, or a JSON list of base64 strings).
What keeps the service standing under load, in the order a request meets it:

- an optional bearer token (`api_keys`), checked in constant time before anything else;
- admission (`Limits`): `max_concurrency` requests at once read, decode and score; `max_queue` more wait for a slot;
  any further request is answered 503 with `Retry-After` at once, before its body is read, so memory stays near
  `max_concurrency x max_bytes` plus the model however large a burst;
- the body must arrive within `read_timeout` (408) and stay under `max_bytes` (413), and the answer must be ready by
  the request's deadline, `timeout` seconds after it arrived (504);
- a request refused before its whole body arrived (503, 401, 413, 408, 504) is answered first, then the rest of its
  body is read and thrown away (`_Drained`: at most `max_discard` bytes, within `read_timeout`) and the connection is
  closed: a client still sending a photo reads its answer instead of a reset. A client that sent
  `Expect: 100-continue` was never invited to send the body, so it has none to throw away;
- scoring runs in a pool of `max_concurrency` threads, so the event loop keeps accepting requests while onnxruntime
  works; the classifier and the known-item index are safe to share across those threads.


Every request gets a request id (`X-Request-ID` in and out), one JSON access-log line (logger `wildvision.access`)
and Prometheus metrics (`GET /metrics`); every error, an unexpected one included, is JSON in one shape.
The API documentation pages (`/docs`, `/redoc`) load their scripts from the service itself (fastapi-offline), so
they work offline. This package imports FastAPI at the top: `wildvision` itself imports it only when `serve` runs.
"""

from wildvision.service.admission import DEFAULT_MAX_BYTES, DEFAULT_MAX_DISCARD, Limits
from wildvision.service.app import create_app
from wildvision.service.middleware import access_log

__all__ = ["DEFAULT_MAX_BYTES", "DEFAULT_MAX_DISCARD", "Limits", "access_log", "create_app"]
