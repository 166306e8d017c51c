"""Plain CLI parameters without pydantic: typer 0.2x coerces every parameter through a pydantic TypeAdapter,
which costs each CLI call about 90 ms (pydantic's import and one schema per parameter). Values of the plain
types our commands use (str, int, float, bool, Path, and lists or optionals of them) are converted directly;
anything else, or a typer without this seam, keeps typer's own coercion."""

from __future__ import annotations

import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_PLAIN: dict[Any, Callable[[Any], Any]] = {str: str, int: int, float: float, Path: Path, bool: bool}


def _plain_type(annotation: Any) -> Any:
    """The element type of T, T | None, list[T] or list[T] | None; None when it is not one of those."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        rest = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _plain_type(rest[0]) if len(rest) == 1 else None
    if origin is list:
        (inner,) = typing.get_args(annotation) or (None,)
        return inner if inner in _PLAIN else None
    return annotation if annotation in _PLAIN else None


def install() -> None:
    """Route plain parameters around the pydantic adapters (idempotent; a no-op on other typer versions)."""
    try:
        from typer import _coercion, core
        from typer._click.exceptions import BadParameter
    except ImportError:
        return
    original = getattr(core, "build_runtime_param", None)
    base = getattr(_coercion, "RuntimeParam", None)
    if original is None or base is None or getattr(original, "mpicloud_plain", False):
        return

    @dataclass(frozen=True)
    class PlainParam(base):  # type: ignore[valid-type,misc]
        convert: Callable[[Any], Any]

        def _coerce_value(self, value: Any, param: Any, ctx: Any) -> Any:
            try:
                if isinstance(value, (list, tuple)):
                    return type(value)(self.convert(item) for item in value)
                return self.convert(value)
            except (TypeError, ValueError):
                raise BadParameter(f"{value!r} is not a valid {self.convert.__name__}", ctx=ctx,
                                   param=param) from None

    def build(descriptor: Any) -> Any:
        plain = None if descriptor.file_annotation is not None else _plain_type(descriptor.annotation)
        if plain is None:
            return original(descriptor)
        return PlainParam(annotation=descriptor.annotation, parameter_info=descriptor.parameter_info,
                          convert=_PLAIN[plain])

    build.mpicloud_plain = True  # type: ignore[attr-defined]
    setattr(core, "build_runtime_param", build)  # noqa: B010 - typer.core imported the name itself
