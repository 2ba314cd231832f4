"""Griffe extension: docstrings as this package writes them, read as mkdocstrings expects.

1. A module attribute's ``#:`` comment block is its docstring.
2. A Google ``Example:`` section is read as ``Examples:``, so its ``>>>`` lines render as
   highlighted doctest code (griffe knows only the plural as an examples section).
3. An ``Args:`` entry whose names wrap (``in_channels, out_channels, ...,`` then
   ``bias, padding_mode: as nn.Conv2d``) is joined onto one line, so griffe reads it as
   one entry instead of warning.
4. Sphinx roles render: ``:math:`x``` as math (``$x$``, KaTeX), a ``.. math::`` directive
   as a ``$$ ... $$`` display block, and ``:class:`~a.B```,
   ``:func:``, ``:meth:``, ``:mod:``, ``:data:``, ``:attr:``, ``:exc:`` as code naming the
   object (the last part only after ``~``, leading dots dropped).

The package documents constants the Sphinx way, with ``#:`` lines just above the
assignment (``SAMPLING_MODES``, ``ESTIMATORS``, ...); griffe reads only a string literal
after it. This extension gives an attribute without a docstring the text of the ``#:``
lines that directly precede it. mkdocs.yml loads it for mkdocstrings; the docs tests
load it with griffe.
"""

from __future__ import annotations

import ast
import re
from typing import Any

import griffe

_EXAMPLE = re.compile(r"^(\s*)Example:[ \t]*$", flags=re.MULTILINE)
_MATH = re.compile(r":math:`([^`]+)`")
_ROLE = re.compile(r":(?:py:)?(?:class|func|meth|mod|data|attr|exc|obj):`(~?)\.?([^`]+)`")


def _role(match: re.Match[str]) -> str:
    tilde, target = match.groups()
    return f"`{target.rsplit('.', 1)[-1] if tilde else target}`"


_WRAPPED_NAMES = re.compile(
    r"^([ \t]+\w+(?:, \w+)*,)[ \t]*\n[ \t]+(?=\w+(?:, \w+)*,?[ \t]*(?::|\n))", re.M
)


def _math_blocks(text: str) -> str:
    """A ``.. math::`` directive (its expression on the same line and/or on the more
    indented lines below) as a ``$$ ... $$`` display block (KaTeX through arithmatex)."""
    lines, out, i = text.split("\n"), [], 0
    while i < len(lines):
        line = lines[i]
        stripped = line.lstrip()
        if not stripped.startswith(".. math::"):
            out.append(line)
            i += 1
            continue
        indent = line[: len(line) - len(stripped)]
        body = [stripped[len(".. math::") :].strip()]
        i += 1
        while i < len(lines) and (
            not lines[i].strip() or len(lines[i]) - len(lines[i].lstrip()) > len(indent)
        ):
            if not lines[i].strip() and (i + 1 >= len(lines) or not lines[i + 1].strip()):
                break  # a blank line not followed by more of the block ends it
            body.append(lines[i].strip())
            i += 1
        expr = "\n".join(b for b in body if b)
        if "&" in expr:  # Sphinx aligns at & on its own; KaTeX needs the environment
            expr = f"\\begin{{aligned}}\n{expr}\n\\end{{aligned}}"
        out.extend(
            ["", f"{indent}$$", *(f"{indent}{e}" for e in expr.split("\n")), f"{indent}$$", ""]
        )
    return "\n".join(out)


def _rewrite(text: str) -> str:
    text = _math_blocks(text)
    text = _EXAMPLE.sub(r"\1Examples:", text)
    while True:
        joined = _WRAPPED_NAMES.sub(r"\1 ", text)
        if joined == text:
            break
        text = joined
    text = _MATH.sub(lambda m: f"${m.group(1).strip()}$", text)
    return _ROLE.sub(_role, text)


class CommentDocstrings(griffe.Extension):
    """Set ``attr.docstring`` from the ``#:`` comment lines above an attribute; rewrite
    ``Example:`` sections and Sphinx roles in every docstring (see the module docstring)."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = _rewrite(obj.docstring.value)

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
                _rewrite("\n".join(comment)),
                lineno=index + 2,
                endlineno=attr.lineno - 1,
                parent=attr,
            )
