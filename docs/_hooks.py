"""MkDocs hook: serve KaTeX from a local copy so math renders with no network.

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
from pathlib import Path
from typing import Any

from mkdocs.structure.files import File, Files

log = logging.getLogger("mkdocs.hooks.katex")

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


def on_config(config: Any) -> Any:
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
