"""PowerShell syntax check with the tree-sitter grammar (tree-sitter-language-pack 0.9.1, offline)."""

from __future__ import annotations

from typing import Any

from tree_sitter_language_pack import get_parser


def syntax_problems(script: str) -> list[str]:
    """ERROR and MISSING nodes of the parse tree, with their 1-based line numbers."""
    problems: list[str] = []
    stack: list[Any] = [get_parser("powershell").parse(script.encode("utf-8")).root_node]
    while stack:
        node = stack.pop()
        if node.type == "ERROR" or node.is_missing:
            kind = "missing" if node.is_missing else "error"
            problems.append(f"line {node.start_point[0] + 1}: {kind} near {node.text[:60]!r}")
        stack.extend(node.children)
    return problems
