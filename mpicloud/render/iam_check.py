"""A small IAM evaluator for what offline tools cannot check: `s3:prefix` conditions on s3:ListBucket."""

from __future__ import annotations

import fnmatch
import re
from typing import Any, Literal

Decision = Literal["allow", "deny", "implicit-deny"]
OPERATORS = ("StringEquals", "StringLike")


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def _like(pattern: str, value: str) -> bool:
    """IAM StringLike: `*` any run of characters (also empty), `?` one character, nothing else special."""
    regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.fullmatch(regex, value, flags=re.DOTALL) is not None


def _condition_holds(condition: dict[str, Any], context: dict[str, str]) -> bool:
    for operator, tests in condition.items():
        if operator not in OPERATORS:
            raise ValueError(f"condition operator {operator} is not supported by this evaluator")
        for key, wanted in tests.items():
            if key not in context:   # a missing key never matches a String* operator
                return False
            value = context[key]
            if operator == "StringEquals" and value not in _as_list(wanted):
                return False
            if operator == "StringLike" and not any(_like(p, value) for p in _as_list(wanted)):
                return False
    return True


def _matches(statement: dict[str, Any], action: str, resource: str, context: dict[str, str]) -> bool:
    actions = _as_list(statement.get("Action", []))
    resources = _as_list(statement.get("Resource", "*"))  # trust policies name no Resource: the role itself
    return (any(fnmatch.fnmatchcase(action.lower(), a.lower()) for a in actions)
            and any(_like(r, resource) for r in resources)
            and _condition_holds(statement.get("Condition", {}), context))


def evaluate(policy: dict[str, Any], action: str, resource: str, context: dict[str, str] | None = None) -> Decision:
    """Decide one request against one identity policy: explicit deny wins, then allow, else implicit deny."""
    matched = [s for s in _as_list(policy["Statement"]) if _matches(s, action, resource, context or {})]
    if any(s["Effect"] == "Deny" for s in matched):
        return "deny"
    return "allow" if matched else "implicit-deny"


def list_scoping_problems(policy: dict[str, Any]) -> list[str]:
    """Why a policy's s3:ListBucket grants are not limited to key prefixes (empty when they are)."""
    problems = []
    for index, statement in enumerate(_as_list(policy["Statement"])):
        actions = [a.lower() for a in _as_list(statement.get("Action", []))]
        if statement.get("Effect") != "Allow" or not any(fnmatch.fnmatchcase("s3:listbucket", a) for a in actions):
            continue
        name = statement.get("Sid", f"statement {index}")
        prefixes = [p for op in OPERATORS for p in _as_list(statement.get("Condition", {}).get(op, {})
                                                              .get("s3:prefix", []))]
        if not prefixes:
            problems.append(f"{name}: s3:ListBucket without an s3:prefix condition lists every key in the bucket")
        for prefix in prefixes:
            if not prefix or not (prefix.endswith("/") or prefix.endswith("/*")):
                problems.append(f"{name}: s3:prefix {prefix!r} also matches sibling prefixes; end it with '/'")
    return problems
