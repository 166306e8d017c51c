"""Load a spec from YAML and turn validation failures into field-path messages with "did you mean"."""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from mpicloud.errors import SpecError
from mpicloud.spec.model import ClusterSpec
from mpicloud.spec.versions import upgrade


def load_spec(path: str | Path) -> ClusterSpec:
    """Read and validate a spec file; raise SpecError listing every problem with its field path."""
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise SpecError(source, [f"cannot read the file ({exc.strerror})"]) from None
    return parse_spec(text, source)


def parse_spec(text: str, source: str = "<spec>") -> ClusterSpec:
    """Validate spec text (YAML or JSON)."""
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark is not None else "YAML"
        raise SpecError(source, [f"{where}: not valid YAML ({getattr(exc, 'problem', exc)})"]) from None
    if not isinstance(document, dict):
        raise SpecError(source, ["the spec must be a mapping of fields such as 'name:', 'cloud:', 'nodes:'"])
    return spec_from_dict(document, source)


def spec_from_dict(document: dict[str, Any], source: str = "<spec>") -> ClusterSpec:
    """Validate an already-parsed spec document."""
    try:
        document = upgrade(document)
    except ValueError as exc:
        raise SpecError(source, [str(exc)]) from None
    try:
        return ClusterSpec.model_validate(document)
    except ValidationError as exc:
        raise SpecError(source, [_describe(error) for error in exc.errors()]) from None


#: the tags pydantic puts into an error's location inside a tagged union: not fields the user wrote
_UNION_TAGS = {"nodes": {"count", "range"}, "bucket": {"s3", "azure_blob"}}


def _describe(error: Any) -> str:
    location = [str(part) for part in error["loc"]]
    if len(location) > 1 and location[1] in _UNION_TAGS.get(location[0], ()):
        del location[1]
    path = ".".join(location) or "(top level)"
    if error["type"] == "extra_forbidden":
        hint = _did_you_mean(location)
        return f"{path}: unknown field{hint}"
    message = str(error["msg"]).removeprefix("Value error, ")
    return f"{path}: {message}"


def _did_you_mean(location: list[str]) -> str:
    model: type[BaseModel] = ClusterSpec
    for part in location[:-1]:
        field = model.model_fields.get(part)
        inner = _model_of(field.annotation) if field else None
        if inner is None:
            return ""
        model = inner
    close = difflib.get_close_matches(location[-1], list(model.model_fields), n=1, cutoff=0.6)
    return f"; did you mean '{close[0]}'?" if close else f"; known fields: {', '.join(model.model_fields)}"


def _model_of(annotation: Any) -> type[BaseModel] | None:
    candidates = [annotation, *getattr(annotation, "__args__", ())]
    for candidate in candidates:
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None
