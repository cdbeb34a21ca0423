"""The structure of every chapter and of the table of contents (BOOK.md §3, §8)."""

import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
TOC = yaml.safe_load((ROOT / "_toc.yml").read_text())
SPECS = ROOT.parent / "shared" / "specs"
SECTIONS = [
    "The question",
    "The idea",
    "The algorithm",
    "A miniature experiment",
    "Explore",
    "Does it reproduce?",
    "What we scaled down",
    "Exercises",
    "References",
]
PARTS = {
    "optimization": "Optimization and numerical methods",
    "dynamics": "Learning dynamics and initialization",
    "sparsity": "Sparsity and pruning",
    "compression": "Compression and efficient adaptation",
    "generalization": "Generalization and inductive bias",
    "generative": "Diffusion, flows and robustness",
    "sequences": "State-space models and scientific ML",
    "llm-data": "Data for language models, in miniature",
    "llm-reasoning": "Reasoning, code and evaluation, in miniature",
}
BIB_KEYS = set(re.findall(r"^@\w+\{(\w+),", (ROOT / "references.bib").read_text(), re.M))


def toc_files() -> list[str]:
    return [entry["file"] for part in TOC["parts"] for entry in part["chapters"]]


CHAPTERS = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "chapters").glob("*/*.md"))


def front_matter(text: str) -> dict:
    match = re.match(r"^---\n(.*?)\n---\n", text, re.S)
    assert match, "the chapter has no front matter"
    return yaml.safe_load(match.group(1))


def test_toc_lists_exactly_the_chapter_files():
    listed = sorted(f"{name}.md" for name in toc_files() if name.startswith("chapters/"))
    assert listed == CHAPTERS
    assert len(set(toc_files())) == len(toc_files()), "a file is listed twice in _toc.yml"


def test_toc_parts_follow_the_nine_parts_and_end_with_the_scoreboard():
    assert TOC["root"] == "intro"
    order = list(PARTS.values())
    captions = [part["caption"] for part in TOC["parts"]]
    assert captions[-1] == "The scoreboard" and toc_files()[-1] == "scoreboard"
    assert captions[:-1] == sorted(captions[:-1], key=order.index), "parts must follow the book's order"
    for part in TOC["parts"][:-1]:
        for entry in part["chapters"]:
            folder = entry["file"].split("/")[1]
            assert PARTS[folder] == part["caption"], f"{entry['file']} is under the wrong part"


@pytest.mark.parametrize("path", CHAPTERS)
def test_chapter_structure(path):
    text = (ROOT / path).read_text()
    meta = front_matter(text)
    assert meta["jupytext"]["text_representation"]["format_name"] == "myst"
    assert meta["kernelspec"]["name"] == "python3", "without a kernelspec Jupyter Book skips the code cells"
    assert re.fullmatch(r"P\d\d", str(meta.get("paper", ""))), "front matter needs `paper: Pnn`"

    prose = re.sub(r"```\{code-cell\}.*?```", "", text, flags=re.S)  # a `# comment` in code is no heading
    assert len(re.findall(r"^# \S", prose, re.M)) == 1, "one H1 title"
    python_roles = re.findall(r"\{(?:py:\w+|mod|func|class|meth|attr|obj)\}`", prose)
    assert not python_roles, f"the book has no Python API docs for {python_roles} roles to resolve: use `code`"
    headings = re.findall(r"^## +(.+?)\s*$", prose, re.M)
    assert [h for h in headings if h in SECTIONS] == SECTIONS, f"sections out of order or missing: {headings}"

    cited = set(re.findall(r"\{footcite[pt]?\}`([^`]+)`", text))
    assert cited, "cite the paper with {footcite}"
    assert cited <= BIB_KEYS, f"unknown citation keys {cited - BIB_KEYS}"
    assert "```{footbibliography}" in text

    code = "\n".join(re.findall(r"```\{code-cell\}[^\n]*\n(.*?)```", text, re.S))
    assert re.search(r"^\s*(from lib\.\w+ import|import lib\.)", code, re.M), "algorithms come from lib/"
    assert "explorer(" in code, "at least one explorer"
    assert "claim(" in code, "at least one claim check"
    for call in code.split("claim(")[1:]:  # each call, up to the next one
        if re.search(r"expect=[\"']not reproduced", call):
            assert "why=" in call, "a claim expected not to reproduce says why="


@pytest.mark.parametrize("path", CHAPTERS)
def test_chapter_has_a_spec(path):
    if not SPECS.exists():
        pytest.skip("../shared/specs is not beside this checkout")
    assert (SPECS / Path(path).relative_to("chapters")).exists(), f"no spec for {path}"
