"""Write the API reference pages (``docs/reference/``) from the packages' ``__all__``.

Every public name gets one ``::: path`` entry (rendered by mkdocstrings) at its
*canonical* import path: the shallowest public package below ``bayesian_layers``
whose ``__all__`` lists it (``bl.lora`` is documented as
``bayesian_layers.adapters.lora``, ``layers.gp.Kernel`` as
``bayesian_layers.layers.Kernel``); names only the top level exports are documented
there. Every other public path of the same object is listed under "Other import
paths" on the page of its entry. Layers are split into one page per family, by the
module that defines them (:data:`LAYER_FAMILIES`); a layer module that no family
claims is an error, so a new family is placed on purpose.

Run ``python docs/_gen_reference.py`` after changing a public ``__all__``;
``tests/test_docs_site.py`` regenerates the pages in memory and fails when the
committed ones differ. ``--nav`` prints the reference part of ``mkdocs.yml``'s nav.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import pkgutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
REFERENCE = ROOT / "docs" / "reference"
ROOT_PACKAGE = "bayesian_layers"
#: public packages not documented (the CLI's demo is an application, not an API)
EXCLUDED_PACKAGES = ("bayesian_layers.demo",)

#: (page slug, title, defining modules claimed, one-line introduction), in nav order;
#: the longest claimed module prefix wins.
LAYER_FAMILIES: list[tuple[str, str, tuple[str, ...], str]] = [
    (
        "base",
        "Base class and parameter seam",
        ("layers.base", "layers._base"),
        "What every layer with uncertain parameters shares: the random parameters by "
        "name, the sampling modes and the noise hook.",
    ),
    (
        "dense",
        "Dense",
        ("layers.linear", "layers.bilinear"),
        "Drop-in replacements for `nn.Linear` and `nn.Bilinear`.",
    ),
    (
        "convolution",
        "Convolution",
        ("layers.conv", "layers.conv_base"),
        "Drop-in replacements for `nn.Conv{1,2,3}d` and `nn.ConvTranspose{1,2,3}d`.",
    ),
    (
        "recurrent",
        "Recurrent",
        ("layers.recurrent",),
        "Drop-in replacements for `nn.LSTMCell`, `nn.GRUCell` and `nn.LSTM`.",
    ),
    (
        "attention",
        "Attention",
        ("layers.attention",),
        "Drop-in replacements for `nn.MultiheadAttention`.",
    ),
    (
        "embedding",
        "Embedding",
        ("layers.embedding",),
        "A drop-in replacement for `nn.Embedding`.",
    ),
    (
        "rank1",
        "Rank-1 and BatchEnsemble",
        ("layers.rank1", "layers.batch_ensemble"),
        "A shared point-estimate weight with per-member rank-1 factors: random "
        "(rank-1 Bayesian) or trained (BatchEnsemble).",
    ),
    (
        "dropout",
        "Dropout",
        ("layers.dropout", "layers.variational_dropout"),
        "Uncertainty over pre-activation units: Monte Carlo dropout and sparse "
        "variational dropout.",
    ),
    (
        "sngp",
        "Spectral normalisation and SNGP",
        ("layers.spectral_norm", "layers.gp.sngp_head"),
        "Distance-aware networks: spectral normalisation with a norm bound and the "
        "SNGP output layer.",
    ),
    (
        "outputs",
        "Stochastic outputs",
        ("layers.outputs",),
        "Uncertainty over outputs: layers that map features to a distribution's "
        "parameters and return a random variable (not to be confused with the "
        "random-variable constructors `bl.Normal`, ...).",
    ),
    (
        "gaussian_processes",
        "Gaussian processes",
        ("layers.gp",),
        "Uncertainty over the function itself: exact, sparse and random-feature "
        "Gaussian-process layers and their numerics.",
    ),
    (
        "kernels",
        "Kernels and mean functions",
        ("layers.gp.kernels", "layers.gp.means"),
        "Covariance functions (they compose with `+` and `*`) and prior means of "
        "the Gaussian-process layers.",
    ),
    (
        "reversible",
        "Reversible layers and flows",
        ("layers.reversible",),
        "Layers that push a distribution from input to output: flows, `Reverse` and `Discretize`.",
    ),
    (
        "point_process",
        "Point processes",
        ("layers.point_process",),
        "An inhomogeneous Poisson process layer and its random point sets.",
    ),
    (
        "functional",
        "Functional routines",
        ("layers.functional",),
        "The pure compute routines of the estimators (noise passed in).",
    ),
    (
        "estimators",
        "Estimators (extending the layers)",
        ("layers.estimators",),
        "The one forward template and the estimator strategies; see "
        '"Adding a weight estimator" in the architecture notes.',
    ),
]

#: pages of the first-level subpackages: (title, introduction), in nav order
PACKAGE_PAGES: dict[str, tuple[str, str]] = {
    "random_variables": (
        "Random variables",
        "Edward2-style random-variable constructors, one per `torch.distributions` "
        "class, all importable from the top level (`bl.Normal(loc, scale)`).",
    ),
    "initializers": (
        "Initializers (weight posteriors)",
        "Trainable weight distributions: the posterior families a layer holds.",
    ),
    "regularizers": (
        "Regularizers (priors and KL)",
        "Penalties on weight random variables: the KL term of the ELBO and its priors.",
    ),
    "metrics": (
        "Metrics",
        "Accuracy, likelihood, calibration and out-of-distribution metrics of predictions.",
    ),
    "tracing": (
        "Tracing",
        "Intercept, record and condition every random-variable construction in a program.",
    ),
    "convert": (
        "Conversion",
        "Turn a deterministic model into a Bayesian one: `bl.to_bayesian` and its report.",
    ),
    "adapters": (
        "Adapters (LoRA)",
        "(Bayesian) low-rank adapters for fine-tuning pretrained models.",
    ),
    "laplace": (
        "Laplace",
        "Post-hoc Laplace posteriors written into the layers.",
    ),
    "swag": (
        "SWAG",
        "Stochastic weight averaging Gaussian posteriors written into the layers.",
    ),
    "optim": (
        "Optimizers",
        "Variational optimizers whose posterior the layers hold (IVON).",
    ),
    "distributed": (
        "Distributed",
        "Data, FSDP2 and tensor parallelism through the layers' public seam.",
    ),
}

#: sections of the top-level page: defining module (below bayesian_layers) -> title
TOP_SECTIONS: dict[str, str] = {
    "random_variables": "Random variables",
    "distributions": "Random variables",
    "objectives": "Losses and the ELBO",
    "kl_schedule": "Losses and the ELBO",
    "predictive": "Prediction",
    "generation": "Prediction",
    "sampling": "Sampling modes",
    "calibration": "Calibration and diagnostics",
    "temperature_scaled": "Calibration and diagnostics",
    "diagnostics": "Calibration and diagnostics",
    "ensemble": "Ensembles and SNGP",
    "sngp": "Ensembles and SNGP",
    "inference": "Probabilistic programs",
    "convert": "Conversion",
}

HEADER = "<!-- Generated by docs/_gen_reference.py from the packages' __all__: do not edit. -->"


@dataclass
class Entry:
    """One documented object: its canonical public path and its other public paths."""

    path: str
    defined_in: str
    aliases: list[str] = field(default_factory=list)
    #: what mkdocstrings renders (``path`` unless griffe reads ``path`` as a module)
    ident: str = ""

    def __post_init__(self) -> None:
        self.ident = self.ident or self.path


def public_packages() -> list[str]:
    """Every public package of ``bayesian_layers`` that has an ``__all__``, root first."""
    root = importlib.import_module(ROOT_PACKAGE)
    names = [ROOT_PACKAGE]
    for info in pkgutil.walk_packages(root.__path__, ROOT_PACKAGE + "."):
        name = info.name
        if not info.ispkg or any(part.startswith("_") for part in name.split(".")):
            continue
        if name.startswith(EXCLUDED_PACKAGES):
            continue
        if getattr(importlib.import_module(name), "__all__", None) is not None:
            names.append(name)
    # public modules that are not packages (``bl.metrics``): those an ``__all__`` lists
    for package in list(names):
        module = importlib.import_module(package)
        for attr in module.__all__:
            value = getattr(module, attr)
            if inspect.ismodule(value) and value.__name__ not in names:
                if getattr(value, "__all__", None) is not None:
                    names.append(value.__name__)
    return names


def public_names() -> list[str]:
    """``package.name`` for every non-module name in every public package's ``__all__``."""
    out = []
    for package in public_packages():
        module = importlib.import_module(package)
        for name in module.__all__:
            if not inspect.ismodule(getattr(module, name)):
                out.append(f"{package}.{name}")
    return out


def load_griffe():  # type: ignore[no-untyped-def]
    import griffe

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _griffe_comments import CommentDocstrings

    return griffe.load(
        ROOT_PACKAGE,
        search_paths=[str(ROOT)],
        docstring_parser="google",
        extensions=griffe.load_extensions(CommentDocstrings()),
    )


def lookup(tree, path: str):  # type: ignore[no-untyped-def]
    """The griffe object at the public ``path`` (``bayesian_layers.x.y``)."""
    return tree[path.split(".", 1)[1]] if "." in path else tree


def _runtime(path: str) -> object:
    package, name = path.rsplit(".", 1)
    return getattr(importlib.import_module(package), name)


def _depth_key(path: str) -> tuple[int, int]:
    package = path.rsplit(".", 1)[0]
    depth = package.count(".")
    return (depth if package != ROOT_PACKAGE else 99, 0)


def collect(tree) -> list[Entry]:  # type: ignore[no-untyped-def]
    """One :class:`Entry` per object, in the order of the packages' ``__all__``."""
    by_target: dict[str, list[str]] = {}
    for path in public_names():
        target = lookup(tree, path).canonical_path
        runtime = _runtime(path)
        if lookup(tree, path).is_module and not inspect.ismodule(runtime):
            # a function named like its module (``bl.sngp``): griffe sees the module
            target = f"{runtime.__module__}.{runtime.__qualname__}"
        by_target.setdefault(target, []).append(path)
    entries = []
    for target, paths in by_target.items():
        ordered = sorted(paths, key=_depth_key)  # stable: __all__ order breaks ties
        ident = ordered[0] if lookup(tree, ordered[0]).canonical_path == target else target
        entries.append(Entry(ordered[0], target.rsplit(".", 1)[0], ordered[1:], ident))
    return entries


def _relative(module: str) -> str:
    return module[len(ROOT_PACKAGE) + 1 :] if module.startswith(ROOT_PACKAGE + ".") else module


def layer_family(module: str) -> str:
    """The slug of the layer family whose claimed prefix is the longest match of ``module``."""
    rel = _relative(module)
    best, best_len = None, -1
    for slug, _title, prefixes, _intro in LAYER_FAMILIES:
        for prefix in prefixes:
            if (rel == prefix or rel.startswith(prefix + ".")) and len(prefix) > best_len:
                best, best_len = slug, len(prefix)
    if best is None:
        raise ValueError(
            f"docs/_gen_reference.py: no layer family claims {module}; add it to LAYER_FAMILIES"
        )
    return best


def page_of(entry: Entry) -> str:
    """The reference page (relative to ``docs/reference``) that holds ``entry``."""
    package = entry.path.rsplit(".", 1)[0]
    if package == ROOT_PACKAGE:
        return "index.md"
    first = package.split(".")[1]
    if first == "layers":
        return f"layers/{layer_family(entry.defined_in)}.md"
    if first not in PACKAGE_PAGES:
        raise ValueError(
            f"docs/_gen_reference.py: no reference page for package bayesian_layers.{first}; "
            "add it to PACKAGE_PAGES"
        )
    return f"{first}.md"


def _aliases_table(entries: list[Entry], page: str) -> list[str]:
    rows = [
        f"| `{alias}` | [`{entry.path}`][{entry.ident}] |"
        for entry in entries
        for alias in entry.aliases
        if page_of(entry) == page
    ]
    if not rows:
        return []
    return [
        "## Other import paths",
        "",
        "The same objects, also exported by these packages:",
        "",
        "| import path | documented as |",
        "| --- | --- |",
        *rows,
        "",
    ]


def _entries_block(entries: list[Entry]) -> list[str]:
    lines = []
    for entry in entries:
        lines += [f"::: {entry.ident}", ""]
    return lines


def render(tree=None) -> dict[str, str]:  # type: ignore[no-untyped-def]
    """Every reference page: ``{path relative to docs/reference: markdown}``."""
    tree = load_griffe() if tree is None else tree
    entries = collect(tree)
    pages: dict[str, list[Entry]] = {}
    for entry in entries:
        pages.setdefault(page_of(entry), []).append(entry)
    out: dict[str, str] = {}

    # top level
    top = pages.get("index.md", [])
    lines = [
        HEADER,
        "",
        "# API reference",
        "",
        "`import bayesian_layers as bl` and `from bayesian_layers import layers`. Each "
        "public name is documented once, at the import path shown in its heading; the "
        "tables list the other paths of the same object.",
        "",
        "## Packages",
        "",
        "- Layers, by family: "
        + ", ".join(
            f"[{title}](layers/{slug}.md)"
            for slug, title, _p, _i in LAYER_FAMILIES
            if f"layers/{slug}.md" in pages
        ),
        *(
            f"- [{title}]({name}.md): {intro}"
            for name, (title, intro) in PACKAGE_PAGES.items()
            if f"{name}.md" in pages
        ),
        "",
    ]
    sections: dict[str, list[Entry]] = {title: [] for title in TOP_SECTIONS.values()}
    for entry in top:
        rel = _relative(entry.defined_in).split(".")[0]
        sections.setdefault(TOP_SECTIONS.get(rel, "Other"), []).append(entry)
    sections = {title: section for title, section in sections.items() if section}
    for title, section in sections.items():
        lines += [f"## {title}", "", *_entries_block(section)]
    elsewhere = [
        f"| `bl.{alias.rsplit('.', 1)[1]}` | [`{entry.path}`][{entry.ident}] |"
        for entry in entries
        if page_of(entry) != "index.md"
        for alias in entry.aliases
        if alias.rsplit(".", 1)[0] == ROOT_PACKAGE
    ]
    if elsewhere:
        lines += [
            "## Top-level names documented with their package",
            "",
            "| `bl.` name | documented as |",
            "| --- | --- |",
            *elsewhere,
            "",
        ]
    lines += _aliases_table(entries, "index.md")
    out["index.md"] = "\n".join(lines).rstrip() + "\n"

    for slug, title, _prefixes, intro in LAYER_FAMILIES:
        page = f"layers/{slug}.md"
        if page not in pages:
            continue
        lines = [HEADER, "", f"# Layers: {title.lower()}", "", intro, ""]
        lines += _entries_block(pages[page]) + _aliases_table(entries, page)
        out[page] = "\n".join(lines).rstrip() + "\n"

    for name, (title, intro) in PACKAGE_PAGES.items():
        page = f"{name}.md"
        if page not in pages:
            continue
        lines = [HEADER, "", f"# {title}", "", f"`bayesian_layers.{name}`: {intro}", ""]
        lines += _entries_block(pages[page]) + _aliases_table(entries, page)
        out[page] = "\n".join(lines).rstrip() + "\n"
    return out


def nav(pages: dict[str, str]) -> list[object]:
    """The ``API reference`` part of ``mkdocs.yml``'s nav for ``pages``."""
    layer_pages = [
        {title: f"reference/layers/{slug}.md"}
        for slug, title, _p, _i in LAYER_FAMILIES
        if f"layers/{slug}.md" in pages
    ]
    return [
        {"Top level (bl)": "reference/index.md"},
        {"Layers": layer_pages},
        *(
            {title: f"reference/{name}.md"}
            for name, (title, _intro) in PACKAGE_PAGES.items()
            if f"{name}.md" in pages
        ),
    ]


def write(pages: dict[str, str]) -> None:
    """Write ``pages`` and remove generated pages that no longer exist."""
    for old in REFERENCE.rglob("*.md"):
        if old.relative_to(REFERENCE).as_posix() not in pages:
            old.unlink()
    for rel, text in pages.items():
        target = REFERENCE / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nav", action="store_true", help="print the reference nav as YAML")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    pages = render()
    if args.nav:
        import yaml

        print(yaml.safe_dump({"API reference": nav(pages)}, sort_keys=False), end="")
        return
    write(pages)


if __name__ == "__main__":
    main()
