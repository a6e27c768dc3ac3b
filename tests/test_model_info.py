"""The model file's metadata schema: round trip, validation, refusal of malformed documents."""

import json

import pytest

from wildvision.model_info import FORMAT_VERSION, ModelFormatError, ModelInfo, OperatingPoint, Preprocessing


def make_info(**changes) -> ModelInfo:
    fields = dict(
        name="m", version="1.2.3", labels=("ivory", "not_ivory"),
        preprocessing=Preprocessing(224, "squash", (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
        temperature=1.7, operating_points={"ivory": OperatingPoint(review=0.3, block=0.9)},
        training={"data": {"manifest_sha256": "abc"}}, metrics={"accuracy": 0.97}, notes="test",
    )
    return ModelInfo(**{**fields, **changes})


def test_json_round_trip_keeps_every_field():
    info = make_info()
    assert ModelInfo.from_json(info.to_json()) == info


def test_document_carries_its_format_version():
    assert json.loads(make_info().to_json())["format_version"] == FORMAT_VERSION


@pytest.mark.parametrize("text", ["not json", "{}", json.dumps({"format_version": FORMAT_VERSION, "name": "x"})])
def test_malformed_metadata_is_refused_clearly(text):
    with pytest.raises(ModelFormatError, match="metadata"):
        ModelInfo.from_json(text)


def test_future_format_is_refused():
    document = json.loads(make_info().to_json())
    document["format_version"] = FORMAT_VERSION + 1
    with pytest.raises(ModelFormatError, match="format"):
        ModelInfo.from_json(json.dumps(document))


@pytest.mark.parametrize("changes", [
    {"labels": ("ivory",)},
    {"labels": ("ivory", "ivory")},
    {"temperature": 0.0},
    {"operating_points": {"rhino_horn": OperatingPoint(0.2, 0.8)}},
])
def test_inconsistent_models_are_refused(changes):
    with pytest.raises(ModelFormatError):
        make_info(**changes)


def test_operating_point_must_be_ordered():
    with pytest.raises(ValueError, match="review <= block"):
        OperatingPoint(review=0.9, block=0.5)


def test_unknown_resize_mode_is_refused():
    with pytest.raises(ModelFormatError, match="resize"):
        Preprocessing(224, "stretch", (0.5,) * 3, (0.5,) * 3)


def test_platform_thresholds_replace_shipped_ones():
    info = make_info().with_operating_points({"ivory": OperatingPoint(0.1, 0.5)})
    assert info.operating_points["ivory"].block == 0.5
    assert make_info().operating_points["ivory"].block == 0.9
