"""lib.book: the explorer, claims, seeding, the house style, source display, the scoreboard and the build."""

import inspect
import io
import itertools
import json
import random
import shutil
from pathlib import Path

import ipywidgets as widgets
import matplotlib as mpl
import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from ipywidgets.widgets.widget import _instances as live_widgets
from ipywidgets.widgets.widget_link import Link
from PIL import Image

from lib.book import (
    ClaimMismatch,
    build,
    claim,
    explorer,
    scoreboard,
    seed_everything,
    show_source,
    sphinx_ext,
)
from lib.book import claims as claim_module
from lib.book import explorers as explorer_module
from lib.book.style import BOOK_RC, OKABE_ITO


def line_plot(a, b):
    fig, ax = plt.subplots(figsize=(3, 2))
    ax.plot([0, 1], [b, a + b])
    ax.set_title(f"a={a} b={b}")
    return fig


# --- explorer -------------------------------------------------------------------------------------


def links_of(widget):
    return [w for w in live_widgets.values() if isinstance(w, Link) and w.source[0] is widget]


def shown_frame(root, sliders):
    """Follow the jslinks as the browser would: each slider's index selects a child in its level's Stacks."""
    for slider in sliders:
        for link in links_of(slider):
            stack, trait = link.target
            assert trait == "selected_index"
            stack.selected_index = slider.index
    node = root
    while isinstance(node, widgets.Stack):
        node = node.children[node.selected_index]
    return node


def test_explorer_shows_the_frame_of_every_combination():
    params = {"a": [1, 2, 3], "b": [0.0, 0.5]}
    box = explorer(line_plot, **params)
    *sliders, root = box.children
    assert [s.description for s in sliders] == ["a", "b"]
    assert [list(s.options) for s in sliders] == [["1", "2", "3"], ["0", "0.5"]]
    for (i, a), (j, b) in itertools.product(enumerate(params["a"]), enumerate(params["b"])):
        sliders[0].index, sliders[1].index = i, j
        frame = shown_frame(root, sliders)
        expected = explorer_module.figure_to_png(line_plot(a, b))
        assert frame.value == expected, f"slider positions ({i}, {j}) show the wrong frame"
    plt.close("all")


def test_explorer_links_one_slider_per_nesting_level():
    box = explorer(line_plot, a=[1, 2, 3], b=[0.0, 0.5, 1.0, 2.0])
    first, second, _ = box.children
    assert len(links_of(first)) == 1  # the root Stack
    assert len(links_of(second)) == 3  # one inner Stack per value of `a`


def test_explorer_uses_given_labels_and_leaves_no_open_figure():
    plt.close("all")
    box = explorer(line_plot, labels={"a": ["low", "high"]}, a=[1, 2], b=[0.0])
    assert list(box.children[0].options) == ["low", "high"]
    assert plt.get_fignums() == []


def test_frames_are_compressed_palette_pngs():
    png = explorer_module.figure_to_png(line_plot(1, 0))
    image = Image.open(io.BytesIO(png))
    assert image.format == "PNG" and image.mode == "P"
    assert len(png) < 30_000


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({}, ValueError, "at least one parameter"),
        ({"a": []}, ValueError, "'a' has an empty list"),
        ({"a": "abc"}, TypeError, "'a' must be a list"),
        ({"a": list(range(41))}, ValueError, "41 frames"),
        ({"a": list(range(7)), "b": list(range(6))}, ValueError, "42 frames"),
        ({"a": [1, 2], "labels": {"a": ["x"]}}, ValueError, "1 labels for 2 values"),
        ({"a": [1, 2], "labels": {"c": ["x"]}}, ValueError, "unknown parameters"),
        ({"a": [1.0, 1.00000001]}, ValueError, "repeated labels"),
    ],
)
def test_explorer_rejects_bad_parameters(kwargs, error, message):
    with pytest.raises(error, match=message):
        explorer(lambda **_: plt.figure(), **kwargs)


def test_explorer_names_the_values_where_render_fails():
    def render(a):
        if a == 2:
            raise ZeroDivisionError("boom")
        return line_plot(a, 0)

    with pytest.raises(RuntimeError, match=r"render failed for \{'a': 2\}: ZeroDivisionError: boom"):
        explorer(render, a=[1, 2])


def test_explorer_rejects_a_render_that_returns_no_figure():
    with pytest.raises(TypeError, match="must return a matplotlib Figure, got NoneType for {'a': 1}"):
        explorer(lambda a: None, a=[1])
    with pytest.raises(TypeError, match="render must be callable"):
        explorer("not a function", a=[1])


def test_explorer_enforces_the_size_budget(monkeypatch):
    monkeypatch.setattr(explorer_module, "MAX_EXPLORER_BYTES", 1000)
    with pytest.raises(ValueError, match="over the 0.0 MB budget"):
        explorer(line_plot, a=[1, 2], b=[0.0])


# --- claim ----------------------------------------------------------------------------------------


@pytest.fixture
def shown(monkeypatch):
    """Capture what claim() displays."""
    outputs = []
    monkeypatch.setattr(claim_module, "display", lambda data, metadata, raw: outputs.append((data, metadata)))
    return outputs


def test_claim_shows_badge_numbers_and_machine_readable_record(shown):
    claim("Ticket matches dense", measured={"ticket": np.float32(0.975), "dense": 0.97}, holds=True,
          expect="reproduced")
    (data, metadata), = shown
    assert "reproduced" in data["text/html"] and "Ticket matches dense" in data["text/html"]
    assert "ticket = 0.975" in data["text/plain"]
    record = metadata[claim_module.CLAIM_METADATA_KEY]
    assert record["outcome"] == "reproduced"
    assert record["measured"] == [["ticket", 0.9750000238418579], ["dense", 0.97]]  # the author's order


def test_claim_accepts_an_honest_negative(shown):
    claim("Gap of 3 points", measured={"gap": 1.2}, holds=np.bool_(False), expect="not reproduced",
          why="digits is too easy")
    record = shown[0][1][claim_module.CLAIM_METADATA_KEY]
    assert record["outcome"] == "not reproduced" and record["why"] == "digits is too easy"
    assert "digits is too easy" in shown[0][0]["text/html"]


@pytest.mark.parametrize(("holds", "expect"), [(True, "not reproduced"), (False, "reproduced")])
def test_claim_raises_when_the_outcome_is_not_the_expected_one(shown, holds, expect):
    with pytest.raises(ClaimMismatch, match="was expected to be"):
        claim("x", measured={"a": 1}, holds=holds, expect=expect, why="w" if expect != "reproduced" else None)
    assert len(shown) == 1  # the badge is still shown before the build fails


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"expect": "maybe"}, ValueError, "expect must be one of"),
        ({"expect": "not reproduced", "holds": False}, ValueError, "needs why="),
        ({"holds": 1}, TypeError, "holds must be a bool"),
        ({"holds": np.array([True, True])}, TypeError, "holds must be a bool"),
        ({"measured": {}}, ValueError, "non-empty dict"),
        ({"measured": {"a": "high"}}, TypeError, r"measured\['a'\] must be a real number"),
        ({"measured": {"a": True}}, TypeError, "must be a real number"),
        ({"measured": {"a": float("inf")}}, ValueError, r"measured\['a'\] must be finite"),
        ({"measured": {"a": np.nan}}, ValueError, "must be finite"),
        ({"statement": "  "}, ValueError, "statement must be a non-empty string"),
        ({"why": ""}, ValueError, "why must be a non-empty string"),
    ],
)
def test_claim_rejects_bad_input(shown, kwargs, error, message):
    args = {"statement": "s", "measured": {"a": 1.0}, "holds": True, "expect": "reproduced"} | kwargs
    with pytest.raises(error, match=message):
        claim(args.pop("statement"), **args)
    assert shown == []


# --- seeding, style, source -----------------------------------------------------------------------


def draws(seed):
    rng = seed_everything(seed)
    return rng.normal(), np.random.rand(), random.random(), torch.rand(1).item()


def test_seed_everything_makes_every_generator_repeat():
    assert draws(3) == draws(3)
    assert draws(3) != draws(4)


@pytest.mark.parametrize(("seed", "error"), [(-1, ValueError), (2**32, ValueError), (1.5, TypeError),
                                             (True, TypeError)])
def test_seed_everything_rejects_bad_seeds(seed, error):
    with pytest.raises(error, match="seed must"):
        seed_everything(seed)


def test_book_style_is_applied_on_import():
    assert mpl.rcParams["axes.prop_cycle"].by_key()["color"] == OKABE_ITO
    assert tuple(mpl.rcParams["figure.figsize"]) == BOOK_RC["figure.figsize"]


def test_show_source_shows_the_code_from_the_file():
    shown_code = show_source(seed_everything).data
    assert shown_code == f"```python\n{inspect.getsource(seed_everything).rstrip()}\n```"
    with pytest.raises(ValueError, match="from the book's library"):
        show_source(json.dumps)
    with pytest.raises(TypeError, match="function, class or module"):
        show_source(3)


# --- scoreboard and build -------------------------------------------------------------------------


def notebook(claims, paper="P99", title="A paper"):
    outputs = [{"output_type": "display_data", "data": {"text/plain": "x"},
                "metadata": {claim_module.CLAIM_METADATA_KEY: c}} for c in claims]
    return {
        "metadata": {"paper": paper},
        "cells": [
            {"cell_type": "markdown", "source": f"# {title}\n\nLead."},
            {"cell_type": "code", "source": "", "outputs": outputs},
            {"cell_type": "code", "source": "", "outputs": [{"output_type": "stream", "text": "hi"}]},
        ],
    }


def a_claim(outcome, why=None):
    return {"statement": "It | works", "measured": [["n", 3.0], ["acc", 0.5]], "outcome": outcome,
            "expect": outcome, "why": why}


def test_scoreboard_has_one_row_per_chapter_with_claims_numbers_outcomes_and_seconds(tmp_path):
    nb = notebook([a_claim("reproduced"), a_claim("not reproduced", why="too small")])
    result = scoreboard.chapter_result(Path("chapters/x/y.md"), nb, nb, 12.34)
    assert result.summary == "1 of 2 claims reproduced"
    md_path, json_path = tmp_path / "scoreboard.md", tmp_path / "out" / "scoreboard.json"
    scoreboard.write_scoreboard([result, result], md_path, json_path)
    text = md_path.read_text()
    rows = [line for line in text.splitlines() if line.startswith("| [P99")]
    assert len(rows) == 2
    assert "[P99: A paper](chapters/x/y.md)" in rows[0]
    assert "It \\| works" in rows[0] and "n = 3, acc = 0.5" in rows[0]
    assert "not reproduced</span> too small" in rows[0] and "| 12.3 |" in rows[0]
    assert "2 chapters, 2 of 4 claims reproduced" in text
    assert json.loads(json_path.read_text())[0]["paper"] == "P99"


def test_scoreboard_needs_a_paper_id_and_a_title():
    with pytest.raises(ValueError, match="names no paper id"):
        scoreboard.chapter_result(Path("c.md"), notebook([], paper=None), notebook([]), 1.0)
    untitled = notebook([])
    untitled["cells"][0]["source"] = "no heading"
    with pytest.raises(ValueError, match="no '# title' heading"):
        scoreboard.chapter_result(Path("c.md"), untitled, untitled, 1.0)


def test_build_lists_the_chapters_of_the_toc_in_order(tmp_path):
    toc = tmp_path / "_toc.yml"
    toc.write_text(
        "format: jb-book\nroot: intro\nparts:\n"
        "  - caption: A\n    chapters:\n      - file: chapters/a/one\n      - file: chapters/a/two\n"
        "  - caption: S\n    chapters:\n      - file: scoreboard\n"
    )
    assert [p.relative_to(build.ROOT).as_posix() for p in build.toc_chapters(toc)] == [
        "chapters/a/one.md", "chapters/a/two.md"]


def write_tree(root, files):
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)


def test_chapter_dependencies_follow_lib_imports_transitively(tmp_path):
    write_tree(tmp_path, {
        "chapters/c.md": "```{code-cell} ipython3\nimport numpy\nfrom lib.a import f\nimport lib.d as d\n```\n",
        "lib/a.py": "from lib.b import g\nfrom lib import (e,\n    h as k)\n",
        "lib/b.py": "import os\n", "lib/c.py": "from lib.a import f\n", "lib/d.py": "", "lib/e.py": "",
        "lib/h.py": "", "lib/__init__.py": "", "lib/book/__init__.py": "from lib.book.x import y\n",
        "lib/book/x.py": "", "lib/book/z.py": ""})
    names = [p.relative_to(tmp_path).as_posix() for p in build.chapter_dependencies(tmp_path / "chapters/c.md",
                                                                                    tmp_path)]
    assert names == ["lib/__init__.py", "lib/a.py", "lib/b.py", "lib/book/__init__.py", "lib/book/x.py",
                     "lib/book/z.py", "lib/d.py", "lib/e.py", "lib/h.py"]


def test_chapter_key_changes_with_its_dependencies_and_requirements_only(tmp_path):
    write_tree(tmp_path, {"chapters/c.md": "from lib.a import f\n", "lib/a.py": "from lib.b import g\n",
                          "lib/b.py": "x = 1\n", "lib/other.py": "y = 1\n", "lib/book/__init__.py": "",
                          "requirements.txt": "numpy==2\n", "pyproject.toml": ""})
    chapter = tmp_path / "chapters/c.md"
    key = build.chapter_key(chapter, tmp_path)
    (tmp_path / "lib/other.py").write_text("y = 2\n")
    assert build.chapter_key(chapter, tmp_path) == key
    (tmp_path / "lib/b.py").write_text("x = 2\n")
    changed_lib = build.chapter_key(chapter, tmp_path)
    (tmp_path / "requirements.txt").write_text("numpy==3\n")
    assert len({key, changed_lib, build.chapter_key(chapter, tmp_path)}) == 3


def test_a_changed_module_drops_the_cached_executions_of_its_chapters_only(tmp_path, monkeypatch):
    import nbformat
    from jupyter_cache import get_cache
    from jupyter_cache.base import CacheBundleIn

    write_tree(tmp_path, {"one.md": "from lib.a import x\n", "two.md": "from lib.b import x\n", "lib/a.py": "",
                          "lib/b.py": "", "lib/book/__init__.py": "", "requirements.txt": "", "pyproject.toml": ""})
    chapters = [tmp_path / "one.md", tmp_path / "two.md"]
    monkeypatch.setattr(build, "ROOT", tmp_path)
    monkeypatch.setattr(build, "KEYS", tmp_path / "keys.json")
    cache = get_cache(str(tmp_path / "cache"))

    def cache_executions():
        for path in chapters:
            notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(path.read_text())])
            cache.cache_notebook_bundle(CacheBundleIn(notebook, str(path)), check_validity=False, overwrite=True)

    def cached():
        return sorted(Path(record.uri).name for record in cache.list_cache_records())

    cache_executions()
    assert build.forget_stale_executions(cache, chapters) == chapters  # no keys recorded yet
    assert cached() == []
    cache_executions()
    assert build.forget_stale_executions(cache, chapters) == []
    (tmp_path / "lib/b.py").write_text("x = 1\n")
    assert build.forget_stale_executions(cache, chapters) == [chapters[1]]
    assert cached() == ["one.md"]


def test_the_book_chapters_depend_on_their_modules():
    deps = {p.relative_to(build.ROOT).as_posix() for p in build.chapter_dependencies(
        build.ROOT / "chapters/llm-data/representation-selection.md")}
    assert {"lib/representation_selection.py", "lib/tiny_lm.py", "lib/validation.py", "lib/book/build.py"} <= deps
    assert "lib/pruning.py" not in deps


class Script:
    def __init__(self, filename, body=None):
        self.filename, self.attributes = filename, ({"body": body} if body else {})


def test_sphinx_extension_drops_duplicate_scripts_in_place():
    scripts = [Script("a.js"), Script(None, "const X = 1"), Script("b.js"), Script("", "const X = 1"),
               Script("a.js"), Script(None, "const Y = 2")]
    context = {"script_files": scripts}
    sphinx_ext.drop_duplicate_scripts(None, "page", "page.html", context, None)
    assert context["script_files"] is scripts
    assert [(s.filename, s.attributes.get("body")) for s in scripts] == [
        ("a.js", None), (None, "const X = 1"), ("b.js", None), (None, "const Y = 2")]


def test_numpy_scalars_display_as_plain_numbers_in_ipython():
    from IPython.core.formatters import format_display_data
    from IPython.core.interactiveshell import InteractiveShell

    from lib.book.display import show_numpy_scalars_plainly

    InteractiveShell.instance()
    show_numpy_scalars_plainly()
    for value, text in [(np.float64(0.95), "0.95"), (np.float32(0.5), "0.5"), (np.int64(3), "3"),
                        (np.bool_(True), "True")]:
        assert format_display_data(value)[0]["text/plain"] == text


CHAPTER_HEADER = """---
jupytext:
  text_representation: {extension: .md, format_name: myst, format_version: 0.13}
kernelspec: {display_name: Python 3, language: python, name: python3}
paper: P99
---

# A tiny chapter

```{code-cell} ipython3
"""


def test_build_executes_chapters_and_names_the_one_that_fails(tmp_path):
    from jupyter_cache import get_cache

    folder = Path(build.ROOT / "_build" / "test-chapters")
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    good, bad = folder / "good.md", folder / "bad.md"
    good.write_text(CHAPTER_HEADER + "from lib.book import claim\n"
                    "claim('ok', measured={'x': 1.0}, holds=True, expect='reproduced')\n```\n")
    bad.write_text(CHAPTER_HEADER + "x = 1\n```\n\n```{code-cell} ipython3\nraise ValueError('broken cell')\n```\n")
    cache = get_cache(str(tmp_path / "cache"))
    try:
        build.sync_project(cache, [good, bad])
        failures = build.execute(cache, [good, bad])
        assert len(failures) == 1
        assert failures[0].startswith("_build/test-chapters/bad.md failed to execute")
        assert "raise ValueError('broken cell')" in failures[0] and "\x1b[" not in failures[0]
        (result,) = build.collect(cache, [good])
        assert (result.paper, result.title) == ("P99", "A tiny chapter")
        assert result.summary == "1 of 1 claims reproduced"
        assert result.seconds > 0
    finally:
        shutil.rmtree(folder, ignore_errors=True)
