"""A Sphinx extension for the book's pages: every script appears at most once on a page.

sphinx-thebe registers its inline configuration script twice under Jupyter Book 1.x, which redeclares a
`const` and raises an error in the browser.
"""

from sphinx.application import Sphinx


def drop_duplicate_scripts(app: Sphinx, pagename: str, templatename: str, context: dict, doctree) -> None:
    """Keep the first of the page's scripts that share a file name and inline body."""
    seen, unique = set(), []
    for script in context.get("script_files", []):
        key = (script.filename or "", script.attributes.get("body", ""))  # inline scripts: None or ""
        if key not in seen:
            seen.add(key)
            unique.append(script)
    context["script_files"][:] = unique  # in place: later handlers add to the same list


def setup(app: Sphinx) -> dict:
    # Early: Sphinx stops calling html-page-context handlers at the first one that returns a template name.
    app.connect("html-page-context", drop_duplicate_scripts, priority=100)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
