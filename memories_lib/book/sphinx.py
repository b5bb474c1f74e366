"""The Sphinx extension of the book (``sphinx: extra_extensions: [memories_lib.book.sphinx]`` in _config.yml)."""

from __future__ import annotations

from typing import Any

from .mathjax import MATHJAX_DIR


def _drop_vendored_scripts(app, config) -> None:
    """Keep the vendored MathJax out of ``html_js_files``.

    Jupyter Book adds every ``.js`` file under ``<root>/_static`` to every page; for the
    vendored MathJax that would be dozens of components (two output renderers, the speech
    engine) on each page. ``mathjax_path`` loads the one entry point, which fetches the rest
    on demand.
    """
    prefix = MATHJAX_DIR.relative_to("_static").as_posix() + "/"

    def vendored(entry) -> bool:
        name = entry if isinstance(entry, str) else entry[0]
        return name.startswith(prefix)

    config.html_js_files = [entry for entry in config.html_js_files if not vendored(entry)]
    config.html_css_files = [entry for entry in config.html_css_files if not vendored(entry)]


def setup(app) -> dict[str, Any]:
    """Sphinx extension entry point."""
    app.connect("config-inited", _drop_vendored_scripts, priority=400)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
