"""The gallery (docs/gallery/) matches examples/: a page per example, its source, its figures.

Nothing runs an example here (tests/test_examples.py does, with --quick): the checks read
files. Pages are re-rendered from each example's docstring, the README's Examples table and
the stored run (docs/gallery/assets/<stem>/run.json) and compared with the committed ones,
so a docstring edited without ``python docs/_gen_gallery.py --pages-only`` fails here.
"""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
GALLERY = ROOT / "docs" / "gallery"


def _load_generator():
    spec = importlib.util.spec_from_file_location("_gen_gallery", ROOT / "docs" / "_gen_gallery.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


gen = _load_generator()
STEMS = gen.example_stems()
IMAGE = re.compile(r"!\[[^\]]*\]\(([^)\s]+)\)|<img [^>]*src=\"([^\"]+)\"")
SNIPPET = re.compile(r'^--8<-- "([^"]+)"$', re.MULTILINE)


def _images(page: Path) -> list[str]:
    return [a or b for a, b in IMAGE.findall(page.read_text())]


def test_examples_are_found():
    assert len(STEMS) >= 15 and "vae" in STEMS and "_image_grid" not in STEMS


def test_every_example_has_a_page_and_no_page_is_stale():
    pages = {p.stem for p in GALLERY.glob("*.md")} - {"index"}
    assert pages == set(STEMS), "run `python docs/_gen_gallery.py <stem>` for a new example"
    assets = {p.name for p in (GALLERY / "assets").iterdir() if p.is_dir()}
    assert assets == set(STEMS)


def test_every_example_is_in_the_readme_table():
    """The index takes each example's paper figure or section from the README's table."""
    assert set(STEMS) <= set(gen.readme_rows())


@pytest.mark.parametrize("stem", STEMS)
def test_page_includes_its_own_source(stem):
    snippets = SNIPPET.findall((GALLERY / f"{stem}.md").read_text())
    assert snippets == [f"examples/{stem}.py"]
    assert (ROOT / snippets[0]).is_file()


@pytest.mark.parametrize("stem", STEMS)
def test_page_images_exist_and_every_asset_is_shown(stem):
    page = GALLERY / f"{stem}.md"
    images = _images(page)
    for src in images:
        assert not src.startswith(("/", "http")), src
        assert (page.parent / src).is_file(), f"{page.name}: broken image {src}"
    figures = {p.name for p in (GALLERY / "assets" / stem).glob("*.png")}
    assert {Path(s).name for s in images} == figures
    assert set(gen.load_run(stem)["figures"]) == figures


@pytest.mark.parametrize("stem", STEMS)
def test_page_is_up_to_date_with_docstring_and_run(stem):
    expected = gen.render_page(stem, gen.readme_rows(), gen.load_run(stem))
    assert (GALLERY / f"{stem}.md").read_text() == expected, (
        f"docs/gallery/{stem}.md is stale: run `python docs/_gen_gallery.py --pages-only`"
    )


def test_index_links_every_page_and_its_thumbnails_exist():
    index = GALLERY / "index.md"
    text = index.read_text()
    runs = {stem: gen.load_run(stem) for stem in STEMS}
    assert text == gen.render_index(STEMS, gen.readme_rows(), runs)
    assert set(re.findall(r"\]\((\w+)\.md\)", text)) == set(STEMS)
    for src in _images(index):
        assert (GALLERY / src).is_file(), f"index.md: broken image {src}"


def test_assets_stay_small():
    """Committed figures: each under 150 kB, all together under 2 MB."""
    sizes = {p: p.stat().st_size for p in (GALLERY / "assets").rglob("*.png")}
    assert all(size < 150_000 for size in sizes.values()), sizes
    assert sum(sizes.values()) < 2_000_000


def test_rst_to_markdown_fences_indented_blocks():
    body = "It runs::\n\n    x = f(y)\n\n    z = g(x)\n\nThen\n\n    python examples/a.py --quick"
    md = gen.rst_to_markdown(body)
    assert md == (
        "It runs:\n\n```python\nx = f(y)\n\nz = g(x)\n```\n\nThen\n\n"
        "```bash\npython examples/a.py --quick\n```"
    )


def _git(*args: str) -> str | None:
    import subprocess

    try:
        proc = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return proc.stdout if proc.returncode == 0 else None


@pytest.mark.parametrize("stem", STEMS)
def test_stored_run_is_of_the_current_script(stem):
    """The figures and printed output come from the script as it is now: the commit of the
    stored run holds the same example (and shared example helpers) as HEAD, so editing an
    example without ``make gallery`` (or ``python docs/_gen_gallery.py <stem>``) fails."""
    import json

    run = json.loads((GALLERY / "assets" / stem / "run.json").read_text())
    if _git("cat-file", "-e", f"{run['commit']}^{{commit}}") is None:
        pytest.skip("not a git checkout with the stored run's commit")
    assert not run["dirty"], f"{stem}: its run was made from uncommitted changes"
    changed = _git("diff", "--name-only", run["commit"], "HEAD", "--", f"examples/{stem}.py",
                   "examples/_*.py")  # fmt: skip
    assert changed == "", f"{stem}: changed since its gallery run: {changed}"
