"""Griffe extension: a module attribute's ``#:`` comment block is its docstring.

The package documents constants the Sphinx way, with ``#:`` lines just above the
assignment (``SAMPLING_MODES``, ``ESTIMATORS``, ...); griffe reads only a string literal
after it. This extension gives an attribute without a docstring the text of the ``#:``
lines that directly precede it. mkdocs.yml loads it for mkdocstrings; the docs tests
load it with griffe.
"""

from __future__ import annotations

import ast
from typing import Any

import griffe


class CommentDocstrings(griffe.Extension):
    """Set ``attr.docstring`` from the ``#:`` comment lines above an attribute."""

    def on_attribute_instance(self, *, node: Any, attr: griffe.Attribute, **kwargs: Any) -> None:
        if attr.docstring is not None or not isinstance(node, ast.AST) or attr.lineno is None:
            return
        collection = attr.lines_collection
        lines = collection[attr.filepath] if attr.filepath in collection else None
        if not lines:
            return
        comment: list[str] = []
        index = attr.lineno - 2  # the line above the assignment, 0-based
        while index >= 0 and lines[index].lstrip().startswith("#:"):
            comment.insert(0, lines[index].lstrip()[2:].strip())
            index -= 1
        if comment:
            attr.docstring = griffe.Docstring(
                "\n".join(comment), lineno=index + 2, endlineno=attr.lineno - 1, parent=attr
            )
