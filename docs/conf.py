"""Sphinx configuration of the pymc_amortize documentation.

Build with ``sphinx-build -W -b html docs docs/_build/html`` (what ``scripts/test.sh`` runs).
Notebooks are rendered without executing them: CI executes them separately with nbmake.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
from pathlib import Path

from docutils.statemachine import StringList
from sphinx.directives.other import TocTree, glob_re
from sphinx.util import docname_join
from sphinx.util.matching import patfilter

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
sys.path.insert(0, str(ROOT))

import pymc_amortize  # noqa: E402

project = "pymc_amortize"
author = "pymc_amortize developers"
copyright = "2026, pymc_amortize developers"
version = release = pymc_amortize.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.mathjax",
    "numpydoc",
    "myst_nb",
]

exclude_patterns = ["_build", "**.ipynb_checkpoints"]
templates_path = ["_templates"]
html_static_path = ["_static"]

# -- theme: the PyMC family's pydata theme -------------------------------------------------------
html_theme = "pydata_sphinx_theme"
html_title = "pymc_amortize"
html_theme_options = {
    "navbar_align": "left",
    "show_toc_level": 2,
    "navigation_with_keys": False,
    "secondary_sidebar_items": ["page-toc"],
}
html_context = {"default_mode": "light"}

# -- API reference: autosummary of each public module's __all__ ----------------------------------
autosummary_generate = True
autosummary_ignore_module_all = False  # list exactly what __all__ exports
autodoc_typehints = "none"  # numpydoc's Parameters sections carry the types
autodoc_default_options = {"member-order": "bysource"}
numpydoc_show_class_members = False  # the class template lists members once
numpydoc_class_members_toctree = False

# -- MyST pages and notebooks --------------------------------------------------------------------
myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence", "deflist"]
myst_heading_anchors = 3
nb_execution_mode = "off"  # notebooks run in CI (pytest --nbmake notebooks/), not here
nb_merge_streams = True


# -- pages that other parts of the project contribute --------------------------------------------
def _copy_if_changed(source: Path, target: Path) -> None:
    if not target.exists() or target.read_bytes() != source.read_bytes():
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)


def _sync_notebooks() -> None:
    """Mirror ``notebooks/*.ipynb`` into ``docs/examples/`` (ignored by git).

    Sphinx reads only files under its source folder; the notebooks live at the top of the
    repository, where nbmake executes them. Copying keeps one copy under version control.
    """
    target_dir = DOCS / "examples"
    sources = {p.name: p for p in sorted((ROOT / "notebooks").glob("*.ipynb"))}
    for stale in target_dir.glob("*.ipynb"):
        if stale.name not in sources:
            stale.unlink()
    for name, source in sources.items():
        _copy_if_changed(source, target_dir / name)


_LINK = re.compile(r"(!?)\[([^\]]*)\]\(([^)\s]+)\)")


def _relink(text: str, source: Path, target: Path) -> str:
    """Point a copied page's relative links and images at their files from its new place.

    Links to files that are not pages of this site (a script, a CSV) become the repository path
    in code font: Sphinx cannot link to files outside its source folder, and ``-W`` would fail.
    """

    def replace(match: re.Match) -> str:
        bang, label, link = match.groups()
        if re.match(r"[a-z]+:|#", link):
            return match.group(0)
        path, _, anchor = link.partition("#")
        resolved = (source.parent / path).resolve()
        relative = Path(os.path.relpath(resolved, target.parent)).as_posix()
        if bang or (resolved.is_relative_to(DOCS) and resolved.suffix in {".md", ".ipynb"}):
            return f"{bang}[{label}]({relative}{'#' + anchor if anchor else ''})"
        return f"{label} (`{resolved.relative_to(ROOT).as_posix()}`)"

    return _LINK.sub(replace, text)


def _sync_included_reports() -> None:
    """Copy reports kept next to their benchmarks (e.g. ``benchmarks/perf/README.md``)."""
    reports = {"performance": ROOT / "benchmarks" / "perf" / "README.md"}
    for page, source in reports.items():
        target = DOCS / "results" / "generated" / f"{page}.md"
        if source.exists():
            text = _relink(source.read_text(), source, target)
            if not target.exists() or target.read_text() != text:
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(text)
        elif target.exists():
            target.unlink()


_sync_notebooks()
_sync_included_reports()


class OptionalTocTree(TocTree):
    """A toctree that leaves out the entries that match no page (yet).

    Pages written on other branches (``errors``, ``beyond``, ``paper_results`` ...) are listed
    before they land, and a glob such as ``examples/*`` may have nothing left to match; a plain
    toctree warns about both, and ``-W`` makes that an error.
    """

    def run(self):
        current = self.env.current_document.docname
        unclaimed = set(self.env.found_docs) - {current}
        kept = []
        for entry in (line.strip() for line in self.content):
            if not entry:
                continue
            target = docname_join(current, entry)
            if "glob" in self.options and glob_re.match(entry):
                matches = set(patfilter(unclaimed, target))
            else:
                matches = {target} & unclaimed
            if matches:
                kept.append(entry)
                unclaimed -= matches
        if not kept:
            return []
        self.content = StringList(kept, source=self.content.source(0))
        return super().run()


def setup(app):
    app.add_directive("optional-toctree", OptionalTocTree)
    return {"parallel_read_safe": True}
