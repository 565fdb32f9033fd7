"""One validation layer for every input file: training and benchmark records, adapter configs, sweep grids, images.

Every input kind has a pydantic schema; :func:`validate` turns a failure into :class:`BadInput`, a
one-line message naming the file, the record's index (and id) and the field::

    data/train.json: record 3 (id 'x'): field 'conversations[0].value': Input should be a valid string (got 5)

JSON is read by :func:`read_json` / :func:`read_records` (syntax errors with line and column,
nesting too deep, not UTF-8: all ``BadInput``). Images are opened by :func:`open_image` with Pillow's
decompression-bomb limit kept (an image above it is bad input, not a crash), and their paths go
through :func:`resolve_inside`, which refuses anything that resolves outside the data folder
(``../``, absolute paths, symlinks pointing out) unless the caller allows it explicitly
(``--allow-outside-paths``). Text longer than :data:`MAX_TEXT_CHARS` is refused before any
tokenisation.

    from dpvr.validation import read_records, validate_training_record
    records = read_records("train.json", "data file")
    for i, rec in enumerate(records):
        validate_training_record(rec, f"train.json: record {i}")
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Literal

from pydantic import (BaseModel, ConfigDict, Field, StrictInt, StrictStr, ValidationError, field_validator,
                      model_validator)

MAX_TEXT_CHARS = 100_000  # one turn, question or answer; refused before tokenising
MAX_PATH_CHARS = 4096
MAX_TURNS = 10_000
SPEAKERS = ("human", "user", "gpt", "assistant", "system")
ADAPTER_VARIANTS = ("lf", "pc", "kv", "ideal")  # the variants with a side branch to save


class BadInput(ValueError):
    """An input file, record or value that is wrong: the message is one line saying what and where."""


# --------------------------------------------------------------------------- schemas

class _Schema(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore", populate_by_name=True)


Text = Annotated[StrictStr, Field(max_length=MAX_TEXT_CHARS)]
NonEmptyText = Annotated[StrictStr, Field(min_length=1, max_length=MAX_TEXT_CHARS)]
RelPath = Annotated[StrictStr, Field(min_length=1, max_length=MAX_PATH_CHARS)]


class Turn(_Schema):
    speaker: Literal[SPEAKERS] = Field(alias="from")
    value: Text


def _check_id(v, required: bool):
    if (v is None and not required) or (isinstance(v, (str, int)) and not isinstance(v, bool)):
        return v
    raise ValueError(f"must be a string or an integer, got {_short(v)}")


class TrainingRecord(_Schema):
    """LLaVA conversation record: ``{"id", "image" (optional), "conversations": [{"from", "value"}, ...]}``."""

    id: object = None  # a string or an integer (checked by _id)
    image: object = None  # a path, or a non-empty list of paths (checked by _image_paths)
    conversations: Annotated[list[Turn], Field(min_length=1, max_length=MAX_TURNS)]

    @field_validator("id", mode="before")
    @classmethod
    def _id(cls, v):
        return _check_id(v, required=False)

    @field_validator("image", mode="before")
    @classmethod
    def _image_paths(cls, v):
        items = v if isinstance(v, list) and v else [v]
        if v is not None and not all(isinstance(x, str) and x.strip() and len(x) <= MAX_PATH_CHARS for x in items):
            raise ValueError(f"must be a relative image path (or a list of them), got {_short(v)}")
        return v


class BenchmarkRecord(_Schema):
    """One line of ``<family>.jsonl``: ``id``, ``image``, ``question``, ``answer``; ``category``, ``options`` optional."""

    id: object
    image: RelPath
    question: NonEmptyText
    answer: Text
    category: StrictStr = ""
    family: StrictStr | None = None
    options: Annotated[list[NonEmptyText], Field(min_length=2, max_length=26)] | None = None

    @field_validator("id", mode="before")
    @classmethod
    def _id(cls, v):
        return _check_id(v, required=True)

    @field_validator("image", "question")
    @classmethod
    def _not_blank(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("must not be blank")
        return v

    @model_validator(mode="after")
    def _answer_is_an_option_letter(self):
        if self.options is not None:
            letters = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"[: len(self.options)]
            if self.answer.strip().upper() not in letters:
                raise ValueError(f"answer {self.answer!r} is not one of the option letters {', '.join(letters)}")
        return self


class AdapterDPVRConfig(_Schema):
    """The ``dpvr_config`` entry of an adapter: a variant with a side branch, and its routing fields."""

    model_config = ConfigDict(strict=True, extra="forbid")
    variant: Literal[ADAPTER_VARIANTS]
    split: Annotated[StrictInt, Field(ge=1)]
    num_fusion_layers: Annotated[StrictInt, Field(ge=1)] | None = None
    fusion_layers: Annotated[list[Annotated[StrictInt, Field(ge=0)]], Field(min_length=1)] | None = None
    side_depth: Annotated[StrictInt, Field(ge=1)] = 1
    side_init: Literal["copy", "random"] = "copy"
    fastv_k: Annotated[StrictInt, Field(ge=1)] | None = None
    fastv_ratio: Annotated[float, Field(ge=0.0, le=1.0, strict=False)] | None = None
    route: Literal["all", "image", "video"] = "all"  # which visual tokens are routed (dpvr.config.ROUTES)


class AdapterBaseModel(_Schema):
    name_or_path: StrictStr | None = None
    fingerprint: dict[StrictStr, StrictStr | StrictInt | None]


class AdapterConfigFile(_Schema):
    """``dpvr_config.json`` of an adapter folder (further entries, e.g. a manifest, are kept as they are)."""

    model_config = ConfigDict(strict=True, extra="allow")
    format_version: Annotated[StrictInt, Field(ge=1)]
    dpvr_version: StrictStr | None = None
    dpvr_config: AdapterDPVRConfig
    base_model: AdapterBaseModel
    num_parameters: Annotated[StrictInt, Field(ge=0)] | None = None


PositiveInt = Annotated[StrictInt, Field(ge=1)]


class SweepGrid(_Schema):
    """Parsed ``--grid`` axes (:func:`dpvr.sweep.grid.parse_grid`)."""

    model_config = ConfigDict(strict=True, extra="forbid")
    split: Annotated[list[PositiveInt], Field(min_length=1)] | None = None
    num_fusion_layers: Annotated[list[PositiveInt], Field(min_length=1)] | None = None
    side_depth: Annotated[list[PositiveInt], Field(min_length=1)] | None = None
    lr: Annotated[list[Annotated[float, Field(gt=0.0, allow_inf_nan=False)]], Field(min_length=1)] | None = None
    fusion_layers: Annotated[list[RelPath], Field(min_length=1)] | None = None
    distill: Annotated[list[bool], Field(min_length=1)] | None = None
    distill_kl_weight: Annotated[list[Annotated[float, Field(ge=0.0, allow_inf_nan=False)]], Field(min_length=1)] | None = None
    distill_feature_weight: Annotated[list[Annotated[float, Field(ge=0.0, allow_inf_nan=False)]], Field(min_length=1)] | None = None
    warmup_ratio: Annotated[list[Annotated[float, Field(ge=0.0, lt=1.0, allow_inf_nan=False)]], Field(min_length=1)] | None = None

    @model_validator(mode="after")
    def _no_repeated_values(self):
        for axis in type(self).model_fields:
            values = getattr(self, axis)
            if values is not None and len(set(values)) != len(values):
                raise ValueError(f"axis {axis!r} repeats a value ({values}): every grid point must be distinct")
        return self


class AnalysisFile(_Schema):
    """The part of ``saturation.json`` (``dpvr analyze``) that the sweep reads."""

    suggested_split: PositiveInt | None = None


# --------------------------------------------------------------------------- turning errors into one line

def _field(loc: tuple) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _short(value, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


_PLAIN = {"dict_type": "must be a JSON object", "model_type": "must be a JSON object",
          "model_attributes_type": "must be a JSON object", "extra_forbidden": "is not a known field"}


def _describe(errors: list[dict]) -> str:
    missing = [_field(e["loc"]) for e in errors if e["type"] == "missing"]
    if missing:
        return f"lacks {', '.join(missing)}"
    e = errors[0]
    field = _field(e["loc"])
    if e["type"] == "string_too_long":
        n = len(e["input"]) if isinstance(e["input"], str) else "?"
        what = f"is {n:,} characters, over the limit of {MAX_TEXT_CHARS:,} (checked before tokenising); shorten it"
    elif e["type"] == "value_error":
        what = str(e["msg"]).removeprefix("Value error, ")
        if not e["loc"]:  # a check of the whole record
            return what
    elif e["type"] == "too_short":
        what = f"must have at least {e['ctx']['min_length']} item(s) (got {_short(e['input'])})"
    else:
        what = f"{_PLAIN.get(e['type'], e['msg'].replace('Input should be', 'must be'))} (got {_short(e['input'])})"
    more = f" (+{len(errors) - 1} more problem(s))" if len(errors) > 1 else ""
    return f"field {field!r} {what}{more}" if field else f"{what}{more}"


def validate(schema: type[BaseModel], data, where: str, name_record: str = " (id {!r})") -> BaseModel:
    """``schema`` validated from ``data``; a failure is :class:`BadInput` ``"<where>: <what is wrong>"``.

    A record's ``id`` (when it has a usable one) follows ``where``, formatted by ``name_record``.
    """
    if not isinstance(data, dict):
        raise BadInput(f"{where}: expected a JSON object, got {type(data).__name__} {_short(data, 40)}")
    try:
        return schema.model_validate(data)
    except ValidationError as err:
        rid = data.get("id")
        who = name_record.format(rid) if isinstance(rid, (str, int)) and not isinstance(rid, bool) else ""
        raise BadInput(f"{where}{who}: {_describe(err.errors(include_url=False))}") from None
    except RecursionError:
        raise BadInput(f"{where}: nested too deeply to validate") from None


def validate_training_record(record, where: str) -> dict:
    """A LLaVA conversation record, checked; returns it unchanged."""
    validate(TrainingRecord, record, where)
    return record


def validate_benchmark_record(record, where: str) -> dict:
    """A benchmark record, checked; returns it unchanged."""
    validate(BenchmarkRecord, record, where, name_record=": record {!r}")
    return record


def validate_adapter_config(meta, path: str | Path) -> dict:
    """The content of an adapter's ``dpvr_config.json``, checked; returns it unchanged."""
    try:
        validate(AdapterConfigFile, meta, str(path))
    except BadInput as err:
        raise BadInput(f"{err}; the adapter config is corrupt or was edited by hand: save the adapter again") from None
    return meta


def validate_grid(grid: dict) -> dict:
    """Parsed sweep grid axes, checked (positive integers, finite positive learning rates, no repeats)."""
    validate(SweepGrid, grid, "--grid")
    return grid


# --------------------------------------------------------------------------- JSON files

def read_json(path: str | Path, what: str = "file"):
    """Parsed JSON of ``path``; every way it can be unreadable is one :class:`BadInput` line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} does not exist" + (" (it is a folder)" if path.is_dir() else ""))
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise BadInput(f"{path} is not UTF-8 text (byte {err.start}); is it really a {what}?") from None
    return _loads(text, str(path))


def _loads(text: str, where: str):
    try:
        return json.loads(text, parse_constant=_no_constant)
    except json.JSONDecodeError as err:
        raise BadInput(f"{where} is not valid JSON: {err.msg} at line {err.lineno}, column {err.colno}") from None
    except RecursionError:
        raise BadInput(f"{where} is nested too deeply to be a {'record' if ':' in where else 'data'} file") from None
    except ValueError as err:  # NaN / Infinity
        raise BadInput(f"{where} is not valid JSON: {err}") from None


def _no_constant(name: str):
    raise ValueError(f"{name} is not a JSON number")


def _is_one_object(text: str) -> bool:
    try:
        return isinstance(json.loads(text), dict)
    except (ValueError, RecursionError):
        return False


def read_records(path: str | Path, what: str = "data file") -> list:
    """A JSON list of records, or JSON Lines (one record per line); errors name the line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} does not exist" + (" (it is a folder)" if path.is_dir() else ""))
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise BadInput(f"{path} is not UTF-8 text (byte {err.start}); is it really a {what}?") from None
    if text.lstrip().startswith("["):
        records = _loads(text, str(path))
        if not isinstance(records, list):  # e.g. "[1] 2" cannot get here; kept for clarity
            raise BadInput(f"{path} must hold a JSON list of records")
    elif path.suffix == ".json" and text.strip() and _is_one_object(text):
        raise BadInput(f"{path} must hold a JSON list of records (or JSON Lines in a .jsonl file), got one object; "
                       "wrap a single record in [ ]")
    elif text.lstrip().startswith("{") or not text.strip():
        records = [_loads(line, f"{path}, line {n}") for n, line in enumerate(text.splitlines(), 1) if line.strip()]
    else:
        value = _loads(text, str(path))
        raise BadInput(f"{path} must hold a JSON list of records (or JSON Lines), got {type(value).__name__}")
    if not records:
        raise BadInput(f"{path} holds no records")
    return records


# --------------------------------------------------------------------------- image paths and files

def resolve_inside(root: str | Path, name: str, where: str, allow_outside: bool = False) -> Path:
    """``root / name``, refused when it resolves outside ``root`` (``..``, absolute, symlink out) unless allowed."""
    root = Path(root)
    path = root / name
    if allow_outside:
        return path
    hint = "keep images inside the folder, or pass --allow-outside-paths if you trust this data"
    if Path(name).is_absolute():
        raise BadInput(f"{where}: image path {name!r} is absolute, not relative to {root}; {hint}")
    real = path.resolve()
    if not real.is_relative_to(root.resolve()):
        raise BadInput(f"{where}: image {name!r} resolves to {real}, outside {root}; {hint}")
    return path


def _image_errors():
    from PIL import Image, UnidentifiedImageError

    return (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError, ValueError)


def _why(err: Exception, path: Path) -> str:
    from PIL import Image, UnidentifiedImageError

    if isinstance(err, Image.DecompressionBombError):
        return (f"is too large to decode safely ({err}); resize it below {Image.MAX_IMAGE_PIXELS:,} pixels")
    if isinstance(err, UnidentifiedImageError):
        return "is not an image Pillow can read"
    return f"cannot be decoded ({type(err).__name__}: {err})"


def check_image(path: str | Path, where: str) -> None:
    """Check without decoding: the file exists, is a complete image (``verify``), within Pillow's pixel limit."""
    from PIL import Image

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{where}: image {path} does not exist")
    try:
        with Image.open(path) as im:
            im.verify()  # reads the file's structure (PNG: every chunk and its CRC) without decoding pixels
    except _image_errors() as err:
        raise BadInput(f"{where}: image {path} {_why(err, path)}") from None


def open_image(path: str | Path, where: str):
    """The decoded RGB image at ``path`` (Pillow's limits kept); a file that is not one is :class:`BadInput`."""
    from PIL import Image

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{where}: image {path} does not exist")
    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except _image_errors() as err:
        raise BadInput(f"{where}: image {path} {_why(err, path)}") from None


