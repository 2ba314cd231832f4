"""MkDocs hooks: files the pages link outside docs/, the gallery's pages in the nav, and
KaTeX from a local copy.

A page's relative link to a repository file outside ``docs/`` (``../benchmarks/results/
images.md``, a figure next to it) is served from a copy under ``repo/`` in the site, and the
link is rewritten to it; a link to a file that does not exist stays as written, so
``--strict`` still fails on it.

The nav entry ``Gallery: gallery/index.md`` becomes a section: the index, then every
``docs/gallery/*.md`` in the order the index links them (the rest sorted), so a gallery
page added or removed by ``docs/_gen_gallery.py`` needs no edit of ``mkdocs.yml``.

``pymdownx.arithmatex`` (generic mode) wraps math in ``<span class="arithmatex">``;
``docs/assets/katex-init.js`` renders those spans with KaTeX's auto-render. KaTeX itself is
taken from the first of ``$BL_KATEX_DIR``, Debian's ``libjs-katex``
(``/usr/share/javascript/katex``) or an npm ``katex/dist`` that exists, and copied into the
site under ``assets/katex/``. Nothing is fetched, at build time or view time: without a
local KaTeX the site still builds and math shows as its TeX source.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any

from mkdocs.structure.files import File, Files

log = logging.getLogger("mkdocs.hooks.katex")

_LINK = re.compile(r"\]\((?!https?:|mailto:|#|/)([^)\s#]+)(#[^)\s]*)?\)")
_REPO_DIR = "repo"


def _outside_target(page_dir: Path, link: str, docs_dir: Path, root: Path) -> Path | None:
    """The repository file a relative ``link`` of a page names, if it lies outside docs/."""
    target = (page_dir / link).resolve()
    if target.is_relative_to(docs_dir) or not target.is_relative_to(root):
        return None
    return target if target.is_file() else None


_CANDIDATES = (
    "/usr/share/javascript/katex",
    "/usr/share/nodejs/katex/dist",
    "node_modules/katex/dist",
)
_DEST = "assets/katex"


def _katex_dir() -> Path | None:
    env = os.environ.get("BL_KATEX_DIR")
    for candidate in ([env] if env else []) + list(_CANDIDATES):
        path = Path(candidate)
        if (path / "katex.min.js").is_file() and (path / "contrib" / "auto-render.js").is_file():
            return path
    return None


def _gallery_section(docs_dir: Path) -> list[str]:
    gallery = docs_dir / "gallery"
    pages = {p.name for p in gallery.glob("*.md")} - {"index.md"}
    linked = re.findall(r"\]\(([\w-]+\.md)\)", (gallery / "index.md").read_text())
    order = list(dict.fromkeys(name for name in linked if name in pages))
    order += sorted(pages - set(order))
    return ["gallery/index.md", *(f"gallery/{name}" for name in order)]


def on_config(config: Any) -> Any:
    nav = config["nav"] or []
    for i, item in enumerate(nav):
        if isinstance(item, dict) and item.get("Gallery") == "gallery/index.md":
            if (Path(config["docs_dir"]) / "gallery" / "index.md").is_file():
                nav[i] = {"Gallery": _gallery_section(Path(config["docs_dir"]))}
    source = _katex_dir()
    config["_bl_katex"] = source
    if source is None:
        log.info("no local KaTeX (apt-get install libjs-katex): math shows as TeX source")
        return config
    config["extra_css"].append(f"{_DEST}/katex.min.css")
    for script in (
        f"{_DEST}/katex.min.js",
        f"{_DEST}/contrib/auto-render.js",
        "assets/katex-init.js",
    ):
        config["extra_javascript"].append(script)
    return config


def on_files(files: Files, config: Any) -> Files:
    docs_dir = Path(config["docs_dir"]).resolve()
    root = Path(config["config_file_path"]).resolve().parent
    added: set[Path] = set()
    for page in [f for f in files if f.src_uri.endswith(".md") and f.abs_src_path]:
        page_dir = Path(page.abs_src_path).parent
        for link, _anchor in _LINK.findall(Path(page.abs_src_path).read_text()):
            target = _outside_target(page_dir, link, docs_dir, root)
            if target is not None and target not in added:
                added.add(target)
                uri = f"{_REPO_DIR}/{target.relative_to(root).as_posix()}"
                files.append(File.generated(config, uri, abs_src_path=str(target)))
    return _add_katex(files, config)


def on_page_markdown(markdown: str, page: Any, config: Any, files: Files) -> str:
    if not page.file.abs_src_path:
        return markdown
    docs_dir = Path(config["docs_dir"]).resolve()
    root = Path(config["config_file_path"]).resolve().parent
    page_dir = Path(page.file.abs_src_path).parent

    def rewrite(match: re.Match[str]) -> str:
        link, anchor = match.group(1), match.group(2) or ""
        target = _outside_target(page_dir, link, docs_dir, root)
        if target is None:
            return match.group(0)
        copy = docs_dir / _REPO_DIR / target.relative_to(root)
        return f"]({os.path.relpath(copy, page_dir)}{anchor})"

    return _LINK.sub(rewrite, markdown)


def _add_katex(files: Files, config: Any) -> Files:
    source = config.get("_bl_katex")
    if source is None:
        return files
    wanted = [
        source / "katex.min.js",
        source / "katex.min.css",
        source / "contrib" / "auto-render.js",
    ]
    wanted += sorted((source / "fonts").glob("*.woff2"))  # a symlink on Debian: not rglob
    for path in wanted:
        rel = path.relative_to(source).as_posix()
        files.append(File.generated(config, f"{_DEST}/{rel}", abs_src_path=str(path)))
    return files
