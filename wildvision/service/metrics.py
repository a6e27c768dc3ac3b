"""The service's Prometheus metrics."""

from __future__ import annotations

from dataclasses import asdict

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

from wildvision.classifier import Classifier

# Seconds: a service photo takes tens of milliseconds to score; queueing and slow uploads make the tail.
_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class _Metrics:
    """The service's Prometheus metrics, in a registry of their own: two apps in one process (tests) never clash."""

    def __init__(self, classifier: Classifier) -> None:
        self.registry = registry = CollectorRegistry()
        Info("wildvision_model", "The model file answering", registry=registry).info(asdict(classifier.identity))
        self.requests = Counter("wildvision_http_requests", "HTTP requests answered, by route and status",
                                ["route", "status"], registry=registry)
        self.latency = Histogram("wildvision_http_request_duration_seconds", "Arrival to the last byte of the answer",
                                 ["route"], buckets=_LATENCY_BUCKETS, registry=registry)
        # `label` as in every answer: the label decided about, so that label="ivory" never counts allowed photos
        self.photos = Counter("wildvision_photos", "Photos scored, by decision and the prohibited label it is about "
                              "(empty when allowed)", ["decision", "label"], registry=registry)
        self.errors = Counter("wildvision_errors", "Errors answered (a request's, or one photo's in a batch), by "
                              "category", ["category"], registry=registry)
        self.queued = Gauge("wildvision_queue_depth", "Requests waiting for a slot", registry=registry)
        self.active = Gauge("wildvision_requests_active", "Requests holding a slot: reading, decoding or scoring",
                            registry=registry)
        self.discarded = Counter("wildvision_discarded_bytes", "Request body bytes read and thrown away after a "
                                 "refusal, so that the client reads its answer", registry=registry)
        self.refused_uploads = Counter("wildvision_refused_uploads", "Requests answered before their body was in, by "
                                       "what became of the rest (see _Drained)", ["outcome"], registry=registry)
