"""Secrets as a type that never prints its value."""

from __future__ import annotations

import os

from mpicloud.errors import MpicloudError


class Secret:
    """A secret value; `str()` and `repr()` show `***`, only `reveal()` gives the value."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        """The secret value itself: pass it straight to the API that needs it."""
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    def __str__(self) -> str:
        return "***"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


def secret_from_env(var: str, what: str) -> Secret:
    """Read a secret from environment variable `var`; error names the variable and its purpose."""
    value = os.environ.get(var)
    if not value:
        raise MpicloudError(f"{what}: environment variable {var} is not set; export it and try again")
    return Secret(value)
