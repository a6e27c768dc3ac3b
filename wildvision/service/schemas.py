"""The service's answers as response models: derived from the library's dataclasses (`Prediction`, `Match`), so
an answer's schema is stated once; and every error in one shape."""

from __future__ import annotations

from dataclasses import fields
from typing import Any, Literal, Optional, get_type_hints

from fastapi import HTTPException
from pydantic import BaseModel, create_model

from wildvision.classifier import Prediction
from wildvision.decision import Decision, Reason
from wildvision.known_items import Match


def _response_model(source: type, model_name: str, **extra: Any) -> type[BaseModel]:
    """A response model with the fields and types of the library's dataclass `source`, so an answer's schema is
    stated once, in the library (`Prediction`, `Match`), and the OpenAPI document follows it."""
    hints = get_type_hints(source)
    described = {field.name: (hints[field.name], ...) for field in fields(source)}
    return create_model(model_name, __doc__=source.__doc__, **described, **extra)


MatchOut = _response_model(Match, "MatchOut")

# `Prediction.to_dict()`, plus `match` when the service runs with a known-item index, and in a batch's answers the
# `name` its photo was sent under, so that a caller never has to match answers to photos by their order alone.
PredictionOut = _response_model(Prediction, "PredictionOut", match=(Optional[MatchOut], None),
                                name=(Optional[str], None))


class ErrorOut(BaseModel):
    """Why a request, or one photo of a batch, was not scored: in words, and in one word for counting."""

    error: str
    category: str


class _ErrorBody(BaseModel):
    detail: ErrorOut


class BatchErrorOut(ErrorOut):
    """Why one photo of a batch was not scored, and the name it was sent under."""

    name: str


class BatchOut(BaseModel):
    results: list[PredictionOut | BatchErrorOut]  # one per photo, in the order sent, each with its photo's name


ReasonOut = _response_model(Reason, "ReasonOut")


class ListingOut(BaseModel):
    """A listing's decision from its photos and words (`ListingPrediction`): the decision, the prohibited labels it is
    flagged for, each label's fused score, the evidence with its source (`reasons`), the photo to see first
    (`deciding_photo`, its position; null without photos), and every photo's own answer in the order sent."""

    decision: Decision
    deciding_photo: int | None
    labels: list[str]
    scores: dict[str, float]
    reasons: list[ReasonOut]  # type: ignore[valid-type]
    photos: list[PredictionOut]  # type: ignore[valid-type]


class HealthOut(BaseModel):
    status: Literal["ok"]
    model_name: str
    model_version: str
    model_precision: str
    model_digest: str  # which model file answers (see `ModelIdentity`)
    known_items: int | None  # items in the known-item index; null when the service runs without one


def _error(status: int, category: str, reason: str, headers: dict[str, str] | None = None) -> HTTPException:
    """An error answer in the service's one shape: `{"detail": {"error": reason, "category": category}}`."""
    return HTTPException(status, {"error": reason, "category": category}, headers)
