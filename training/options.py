"""A training command's options as one typed, frozen dataclass, read from a TOML file and the command line in one place.

Each field is declared with `option(...)`: its default, its help, whether the trained weights depend on it (a run
resumes only into the same weights, so the resume key is derived from this, never from a hand-kept list of names) and
the range a number must lie in. `parse` builds the command line from the fields, reads `--config FILE.toml` (the same
names, `-` or `_`), lets the command line win, and builds the dataclass; `check_ranges` (called by the dataclass's
`__post_init__`) checks every number wherever it came from. A bad value is one line and exit 2, never a traceback.
"""

from __future__ import annotations

import argparse
import math
import tomllib
import types
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Sequence, TypeVar

from training.errors import ConfigError, TrainingError

__all__ = ["AT_LEAST_0", "AT_LEAST_1", "PART", "POSITIVE", "SHARE", "Option", "Range", "as_json", "check_ranges",
           "option", "parse", "weight_settings"]

T = TypeVar("T")


@dataclass(frozen=True)
class Range:
    """The values a number may take, and how an error message words them."""

    wording: str  # what a value "must be", e.g. "at least 1"
    low: float = -math.inf
    high: float = math.inf
    low_open: bool = False  # True: `low` itself is refused
    high_open: bool = False

    def check(self, name: str, value: float | None) -> None:
        if value is None:
            return
        too_low = value < self.low or (self.low_open and value == self.low)
        too_high = value > self.high or (self.high_open and value == self.high)
        if too_low or too_high:
            raise ConfigError(f"{_flag(name)} must be {self.wording}, got {value:g}")


AT_LEAST_0 = Range("0 or more", low=0)
AT_LEAST_1 = Range("at least 1", low=1)
POSITIVE = Range("positive", low=0, low_open=True)
SHARE = Range("a share between 0 and 1", low=0, high=1)
PART = Range("a share with 0 <= value < 1", low=0, high=1, high_open=True)  # must leave some behind (dropout)


@dataclass(frozen=True)
class Option:
    """What a config field means on the command line and to a run."""

    help: str | None
    changes_weights: bool  # False: a rerun with another value resumes the finished training (names, thresholds)
    bounds: Range | None = None
    metavar: str | None = None
    choices: tuple[str, ...] | None = None
    repeatable: bool = False  # a tuple field given as `--x A --x B` rather than `--x A B`
    positional: bool = False  # given by its place, not its name (`compare BASE CANDIDATE`); always required


def option(
    default: Any, help: str | None = None, *, changes_weights: bool, bounds: Range | None = None,
    metavar: str | None = None, choices: Sequence[str] | None = None, repeatable: bool = False,
    positional: bool = False,
) -> Any:
    """A config field with its command-line meaning in `metadata["option"]`."""
    meta = Option(help, changes_weights, bounds, metavar, tuple(choices) if choices else None, repeatable, positional)
    return field(default=default, metadata={"option": meta})


def parse(cls: type[T], argv: Sequence[str] | None, *, prog: str, description: str) -> T:
    """The config from `--config FILE.toml` (where the class has a `config` field) and the command line, which wins.

    Text that is not an option or not a number is argparse's usage error (exit 2); a value of the wrong type or out
    of range, from either place, is a `ConfigError`, which the command's `run_command` prints as one line (exit 2).
    """
    given = vars(_parser(cls, prog, description).parse_args(argv))  # defaults suppressed: only what was given
    configured = _read_toml(cls, given["config"]) if given.get("config") else {}
    hints = typing.get_type_hints(cls)
    return cls(**{name: _typed(name, hints[name], value) for name, value in {**configured, **given}.items()})


def check_ranges(config: object) -> None:
    """Raise `ConfigError`, naming the option, for a number outside its field's range or a word outside its choices
    (argparse checks choices on the command line only, and a config file's values arrive as defaults)."""
    for f in fields(config):
        meta: Option = f.metadata["option"]
        value = getattr(config, f.name)
        if meta.bounds is not None:
            meta.bounds.check(f.name, value)
        if meta.choices is not None and value not in meta.choices:
            raise ConfigError(f"{_flag(f.name)} must be one of {', '.join(meta.choices)}, got {value!r}")


def as_json(config: object) -> dict[str, object]:
    """Every option, JSON-ready, as checkpoints and model files record a run's config."""
    return {f.name: _json_ready(getattr(config, f.name)) for f in fields(config)}


def weight_settings(config: object) -> dict[str, object]:
    """The options the trained weights depend on, JSON-ready."""
    settings = as_json(config)
    return {f.name: settings[f.name] for f in fields(config) if f.metadata["option"].changes_weights}


def _parser(cls: type, prog: str, description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=description, argument_default=argparse.SUPPRESS)
    hints = typing.get_type_hints(cls)
    for f in fields(cls):
        meta: Option = f.metadata["option"]
        kind, many = _element(hints[f.name])
        settings: dict[str, Any] = {"help": meta.help, "metavar": meta.metavar, "choices": meta.choices}
        if kind is bool:
            settings = {"help": meta.help, "action": "store_true"}
        elif many:
            settings.update(type=_from_text(kind), **({"action": "append"} if meta.repeatable else {"nargs": "*"}))
        else:
            settings.update(type=_from_text(kind))
        if meta.positional:
            parser.add_argument(f.name, **{name: value for name, value in settings.items() if name != "metavar"},
                                metavar=meta.metavar or f.name.upper())
        else:
            parser.add_argument(_flag(f.name), **settings)
    return parser


def _read_toml(cls: type, path: Path) -> dict[str, object]:
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as error:
        raise ConfigError(f"cannot read {path}: {error}") from None
    values = {key.replace("-", "_"): value for key, value in document.items()}
    unknown = sorted(set(values) - {f.name for f in fields(cls)})
    if unknown:
        raise ConfigError(f"{path}: unknown option(s) {unknown}")
    try:
        hints = typing.get_type_hints(cls)
        return {name: _typed(name, hints[name], value) for name, value in values.items()}
    except ConfigError as error:
        raise ConfigError(f"{path}: {error}") from None


def _typed(name: str, hint: object, value: object) -> object:
    """`value` (from TOML, or already converted by argparse) as the field's type: tuples for lists, paths for text."""
    kind, many = _element(hint)
    if many:
        items = value if isinstance(value, (list, tuple)) else [value]  # a single path or label is a list of one
        return tuple(_one(name, kind, item) for item in items)
    return _one(name, kind, value)


def _one(name: str, kind: type, value: object) -> object:
    if isinstance(value, kind) and not (kind in (int, float) and isinstance(value, bool)):
        return value
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if kind is Path and isinstance(value, str):
        return Path(value)
    if hasattr(kind, "from_config"):  # e.g. a data source: a path, or a table of a path and its own options
        try:
            return kind.from_config(value)
        except TrainingError as error:
            raise ConfigError(str(error)) from None
    wanted = {int: "a whole number", float: "a number", bool: "true or false"}.get(kind, f"a {kind.__name__}")
    raise ConfigError(f"{_flag(name)} must be {wanted}, got {value!r}")


def _element(hint: object) -> tuple[type, bool]:
    """The type of one value of a field, and whether the field holds several (a tuple)."""
    if isinstance(hint, types.UnionType):  # `X | None`: None is the default, never given
        hint = next(arg for arg in typing.get_args(hint) if arg is not type(None))
    if typing.get_origin(hint) is tuple:
        return typing.get_args(hint)[0], True
    return hint, False


def _from_text(kind: type):
    return getattr(kind, "from_config", kind)


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _json_ready(value: object) -> object:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple):
        return [_json_ready(item) for item in value]
    if hasattr(value, "to_config"):
        return value.to_config()
    return value
