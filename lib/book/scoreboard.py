"""The scoreboard: every chapter's claims, the numbers measured, the outcome and the execution time.

It is written from the executed notebooks (the claims' machine-readable outputs), never by hand.
"""

import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path, PurePosixPath

from lib.book.claims import CLAIM_METADATA_KEY, badge_html, format_number


@dataclass(frozen=True)
class ChapterResult:
    """What one executed chapter reports."""

    path: str
    paper: str
    title: str
    seconds: float
    claims: list[dict]

    @property
    def summary(self) -> str:
        reproduced = sum(c["outcome"] == "reproduced" for c in self.claims)
        return f"{reproduced} of {len(self.claims)} claims reproduced"


def notebook_claims(notebook: dict) -> list[dict]:
    """The claims a notebook emitted, in cell order."""
    return [
        output["metadata"][CLAIM_METADATA_KEY]
        for cell in notebook["cells"]
        if cell["cell_type"] == "code"
        for output in cell.get("outputs", [])
        if CLAIM_METADATA_KEY in output.get("metadata", {})
    ]


def notebook_title(notebook: dict) -> str:
    """The notebook's first H1 heading."""
    for cell in notebook["cells"]:
        if cell["cell_type"] == "markdown":
            match = re.search(r"^# +(.+?)\s*$", "".join(cell["source"]), re.M)
            if match:
                return match.group(1)
    raise ValueError("the chapter has no '# title' heading")


def chapter_result(path: Path, source: dict, executed: dict, seconds: float) -> ChapterResult:
    """Summarize one chapter: paper id (front matter `paper:`) and title from its source notebook, claims from
    the executed one (the cache keeps only code cells), and its execution time."""
    paper = source["metadata"].get("paper")
    if not paper:
        raise ValueError(f"{path}: the front matter names no paper id (paper: Pnn)")
    title = notebook_title(source)
    return ChapterResult(str(PurePosixPath(path)), paper, title, seconds, notebook_claims(executed))


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _claims_cell(claims: list[dict], key) -> str:
    if not claims:
        return "(no claim)"
    return "<br>".join(f"{i}. {_cell(key(c))}" for i, c in enumerate(claims, 1))


def _measured(claim: dict) -> str:
    return ", ".join(f"{name} = {format_number(value)}" for name, value in claim["measured"])


def _outcome(claim: dict) -> str:
    return badge_html(claim["outcome"]) + (f" {claim['why']}" if claim.get("why") else "")


def scoreboard_markdown(results: list[ChapterResult]) -> str:
    """The scoreboard page: one row per chapter."""
    n_claims = sum(len(r.claims) for r in results)
    n_reproduced = sum(c["outcome"] == "reproduced" for r in results for c in r.claims)
    lines = [
        "# Scoreboard",
        "",
        "Which of the papers' claims the miniatures reproduce, with the numbers measured when this book was built.",
        "This page is written by `make book` from the executed chapters; it is never edited by hand.",
        "",
        f"**{len(results)} chapters, {n_reproduced} of {n_claims} claims reproduced.** A claim marked *not",
        "reproduced* says why; each chapter's *What we scaled down* says what differs from the paper.",
        "",
        "| Paper | Claims | Measured | Outcome | Seconds |",
        "|---|---|---|---|---:|",
    ]
    for r in results:
        link = f"[{r.paper}: {_cell(r.title)}]({PurePosixPath(r.path).as_posix()})"
        lines.append(
            f"| {link} | {_claims_cell(r.claims, lambda c: c['statement'])} | {_claims_cell(r.claims, _measured)} "
            f"| {_claims_cell(r.claims, _outcome)} | {r.seconds:.1f} |"
        )
    return "\n".join(lines) + "\n"


def write_scoreboard(results: list[ChapterResult], markdown_path: Path, json_path: Path) -> None:
    """Write the scoreboard page and its machine-readable twin."""
    markdown_path.write_text(scoreboard_markdown(results), encoding="utf-8")
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps([asdict(r) for r in results], indent=2), encoding="utf-8")
