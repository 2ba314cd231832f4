"""The documentation site: every public name is documented and in the API reference,
the generated reference pages and nav are up to date, the home page's quickstart is
the README's (which ``test_readme.py`` runs), layer constructors show real keyword
arguments, and ``mkdocs build --strict`` succeeds.

The reference checks read the package statically with griffe (what mkdocstrings
renders), so a constant's ``#:`` comment counts as its docstring
(``docs/_griffe_comments.py``). The build test needs the ``docs`` extra (it is skipped
without mkdocs) and takes about 10 s.
"""

from __future__ import annotations

import importlib
import inspect
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
REFERENCE = DOCS / "reference"

pytest.importorskip("griffe")
sys.path.insert(0, str(DOCS))
import _gen_reference as gen  # noqa: E402  (docs/ is not a package)


@pytest.fixture(scope="module")
def tree():  # type: ignore[no-untyped-def]
    return gen.load_griffe()


@pytest.fixture(scope="module")
def entries(tree) -> list[gen.Entry]:  # type: ignore[no-untyped-def]
    return gen.collect(tree)


@pytest.fixture(scope="module")
def pages(tree) -> dict[str, str]:  # type: ignore[no-untyped-def]
    return gen.render(tree)


def test_the_public_packages_include_those_the_issue_names() -> None:
    packages = set(gen.public_packages())
    for name in (
        "",
        ".layers",
        ".initializers",
        ".regularizers",
        ".metrics",
        ".distributed",
        ".laplace",
        ".swag",
        ".optim",
        ".adapters",
    ):
        assert f"bayesian_layers{name}" in packages


def test_every_public_name_has_a_docstring(tree, entries) -> None:  # type: ignore[no-untyped-def]
    missing = []
    for entry in entries:
        docstring = gen.lookup(tree, entry.ident).docstring
        if docstring is None or not docstring.value.strip():
            missing.append(entry.ident)
    assert not missing, f"public names without a docstring: {missing}"


def test_every_public_name_is_in_the_reference(entries, pages) -> None:  # type: ignore[no-untyped-def]
    text = "\n".join(pages.values())
    directives = set(re.findall(r"^::: (\S+)$", text, flags=re.MULTILINE))
    assert len(directives) == len(entries)  # each object rendered once
    covered = set()
    for entry in entries:
        assert entry.ident in directives, f"{entry.ident} has no `:::` entry"
        covered.add(entry.path)
        for alias in entry.aliases:
            assert f"| `{alias}` |" in text, f"{alias} is not listed with {entry.path}"
            covered.add(alias)
    public = set(gen.public_names())
    assert public <= covered, f"not in the reference: {sorted(public - covered)}"
    assert len(public) > 300  # every package's __all__ was read


def test_the_reference_pages_are_up_to_date(pages) -> None:  # type: ignore[no-untyped-def]
    on_disk = {p.relative_to(REFERENCE).as_posix(): p.read_text() for p in REFERENCE.rglob("*.md")}
    assert sorted(on_disk) == sorted(pages), "run: python docs/_gen_reference.py"
    stale = [name for name, text in pages.items() if on_disk[name] != text]
    assert not stale, f"stale reference pages {stale}: run python docs/_gen_reference.py"


def test_layers_are_grouped_by_family(pages) -> None:  # type: ignore[no-untyped-def]
    assert "::: bayesian_layers.layers.LinearFlipout" in pages["layers/dense.md"]
    assert "::: bayesian_layers.layers.Conv2dFlipout" in pages["layers/convolution.md"]
    assert "::: bayesian_layers.layers.Kernel" in pages["layers/kernels.md"]
    assert "::: bayesian_layers.layers.Normal" in pages["layers/outputs.md"]
    assert "::: bayesian_layers.random_variables.Normal" in pages["random_variables.md"]
    # bl.lora is documented with the adapters and listed on the top-level page
    assert "::: bayesian_layers.adapters.lora" in pages["adapters.md"]
    assert "| `bl.lora` |" in pages["index.md"]


def test_the_nav_lists_every_reference_page(pages) -> None:  # type: ignore[no-untyped-def]
    yaml = pytest.importorskip("yaml")
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    (reference,) = [item["API reference"] for item in config["nav"] if "API reference" in item]
    assert reference == gen.nav(pages), "print the nav with: python docs/_gen_reference.py --nav"


def test_the_home_page_quickstart_is_the_readme_quickstart() -> None:
    def quickstart(text: str) -> str:
        section = re.split(r"^## Quickstart\n", text, flags=re.MULTILINE)[1]
        return re.search(r"^```python\n(.*?)^```$", section, re.MULTILINE | re.DOTALL).group(1)

    readme = (ROOT / "README.md").read_text()
    assert quickstart((DOCS / "index.md").read_text()) == quickstart(readme)


def test_layer_constructors_show_their_keyword_arguments() -> None:
    """No public layer's signature is a bare ``**kwargs`` that sends the reader elsewhere."""
    layers = importlib.import_module("bayesian_layers.layers")
    bare = []
    for name in layers.__all__:
        obj = getattr(layers, name)
        if not (inspect.isclass(obj) and issubclass(obj, torch.nn.Module)):
            continue
        params = inspect.signature(obj).parameters.values()
        untyped = (inspect.Parameter.empty, "Any")  # ``*kernels: Kernel`` is a real signature
        if any(
            p.kind is p.VAR_KEYWORD or (p.kind is p.VAR_POSITIONAL and p.annotation in untyped)
            for p in params
        ):
            bare.append(f"{name}{inspect.signature(obj)}")
    assert not bare, f"layers with *args/**kwargs in their signature: {bare}"


@pytest.mark.slow
def test_mkdocs_build_strict(tmp_path: Path) -> None:
    """``mkdocs build --strict``: a broken reference, link, snippet or nav entry fails."""
    pytest.importorskip("mkdocs")
    pytest.importorskip("mkdocstrings_handlers.python")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    site = tmp_path / "site"
    # no -q: mkdocs 1.6 then drops warnings before --strict counts them (and passes)
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(site)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert "WARNING" not in result.stderr, result.stderr[-4000:]
    html = (site / "reference" / "layers" / "dense" / "index.html").read_text()
    assert 'id="bayesian_layers.layers.LinearFlipout"' in html
    assert "weight_initializer" in html  # the real keyword arguments in the signature
    assert (site / "index.html").is_file() and (site / "gallery" / "index.html").is_file()


def test_math_directives_become_display_math() -> None:
    """``.. math::`` (inline expression, indented continuation, ``&`` alignment) renders
    as a ``$$`` block; text around it stays."""
    pytest.importorskip("griffe")
    from _griffe_comments import _math_blocks

    out = _math_blocks("Intro.\n\n.. math:: a = b\n    + c\n\nAfter.")
    assert "$$\na = b\n+ c\n$$" in out and out.startswith("Intro.") and out.endswith("After.")
    aligned = _math_blocks("    .. math::\n\n        x &= 1 \\\\\n        y &= 2\n\n    Then.")
    assert "\\begin{aligned}\n    x &= 1 \\\\\n    y &= 2\n    \\end{aligned}" in aligned
    assert ".. math::" not in out + aligned and aligned.rstrip().endswith("Then.")
