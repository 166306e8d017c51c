"""A small evaluator of Azure role-assignment conditions (ABAC, version 2.0), for what no offline tool and no
emulator checks: that the blob conditions of render.blobaccess allow and deny what they should.

Covers the subset those conditions use: `!`/NOT, AND (binds tighter), OR, parentheses, ActionMatches{'…'},
SubOperationMatches{'…'}, and @Resource[…]/@Request[…] attributes with StringEquals or StringStartsWith. A
request is a dict: action, suboperation (or None), and attribute values by name (a missing one never
matches, as in Azure)."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

_TOKEN = re.compile(r"\s*(?:(?P<open>\()|(?P<close>\))|(?P<not>!|NOT\b)|(?P<and>AND\b)|(?P<or>OR\b)"
                    r"|(?P<match>(?:ActionMatches|SubOperationMatches)\{'[^']*'\})"
                    r"|(?P<attr>@(?:Resource|Request)\[[^\]]+\])\s+(?P<op>StringEquals|StringStartsWith)\s+"
                    r"'(?P<value>(?:[^']|'')*)')")
Request = dict[str, Any]
Test = Callable[[Request], bool]


def _tokens(text: str) -> list[re.Match[str]]:
    out, position = [], 0
    while position < len(text.rstrip()):
        found = _TOKEN.match(text, position)
        if not found:
            raise ValueError(f"condition: cannot read {text[position:position + 40]!r}")
        out.append(found)
        position = found.end()
    return out


class _Parser:
    def __init__(self, text: str) -> None:
        self.tokens, self.at = _tokens(text), 0

    def _peek(self, kind: str) -> bool:
        return self.at < len(self.tokens) and self.tokens[self.at].group(kind) is not None

    def _take(self) -> re.Match[str]:
        self.at += 1
        return self.tokens[self.at - 1]

    def parse(self) -> Test:
        test = self._or()
        if self.at != len(self.tokens):
            raise ValueError(f"condition: unexpected {self.tokens[self.at].group(0).strip()!r}")
        return test

    def _or(self) -> Test:
        parts = [self._and()]
        while self._peek("or"):
            self._take()
            parts.append(self._and())
        return lambda request: any(part(request) for part in parts)

    def _and(self) -> Test:
        parts = [self._unary()]
        while self._peek("and"):
            self._take()
            parts.append(self._unary())
        return lambda request: all(part(request) for part in parts)

    def _unary(self) -> Test:
        if self._peek("not"):
            self._take()
            inner = self._unary()
            return lambda request: not inner(request)
        if self._peek("open"):
            self._take()
            inner = self._or()
            if not self._peek("close"):
                raise ValueError("condition: missing ')'")
            self._take()
            return inner
        if self._peek("match"):
            text = self._take().group("match")
            field = "action" if text.startswith("ActionMatches") else "suboperation"
            wanted = text[text.index("'") + 1:-2]
            return lambda request: request.get(field) == wanted
        if self._peek("attr"):
            token = self._take()
            name, op, value = token.group("attr"), token.group("op"), token.group("value").replace("''", "'")
            if op == "StringEquals":
                return lambda request: request.get(name) == value
            return lambda request: isinstance(request.get(name), str) and request[name].startswith(value)
        raise ValueError("condition: expected an expression")


def condition_holds(condition: str, request: Request) -> bool:
    """Whether one condition lets the request through."""
    return _Parser(condition).parse()(request)


def allowed(assignments: list[dict[str, str]], role_actions: dict[str, list[str]], request: Request) -> bool:
    """Azure RBAC: allowed when any assignment's role grants the action and its condition holds."""
    return any(request["action"] in role_actions[a["role"]] and condition_holds(a["condition"], request)
               for a in assignments)
