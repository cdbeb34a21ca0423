"""The book's benchmark (`make bench`): measures the budgets of BOOK.md §6 and writes _build/bench.json.

- each chapter executed alone, one thread (budget 45 s);
- `make book` from cold, with nothing changed, and with one chapter changed (budgets 25 min and 2 min);
- the weight of each chapter page with its images (budget 3 MB), and of the vendored scripts shared by all pages;
- the response of every slider in the built page, in headless Chromium (budget 100 ms).

It is a measurement, not a test: it prints a table and flags what is over budget.
"""

import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import jupytext
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "browser"))

from lib.book.build import CELL_TIMEOUT_SECONDS, CHAPTER_BUDGET_SECONDS, ONE_THREAD, toc_chapters  # noqa: E402
from pages import HTML, check_page, chromium, serve  # noqa: E402

BUDGETS = {"chapter_s": CHAPTER_BUDGET_SECONDS, "cold_build_s": 25 * 60, "one_changed_build_s": 2 * 60,
           "page_mb": 3.0, "slider_ms": 100}
BIN = Path(sys.executable).parent


def execute_alone(path: Path) -> float:
    """Seconds to execute one chapter top to bottom in a fresh kernel, with one thread."""
    notebook = jupytext.read(path)
    os.environ.update(ONE_THREAD)
    client = NotebookClient(notebook, timeout=CELL_TIMEOUT_SECONDS, kernel_name="python3",
                            resources={"metadata": {"path": str(path.parent)}})
    start = time.perf_counter()
    client.execute()
    return time.perf_counter() - start


def make_book() -> float:
    """Seconds for the three steps of `make book`."""
    start = time.perf_counter()
    subprocess.run([BIN / "python", "-m", "lib.book.build"], cwd=ROOT, check=True, capture_output=True)
    subprocess.run([BIN / "jupyter-book", "build", "-W", "-n", "--keep-going", "."], cwd=ROOT, check=True,
                   capture_output=True)
    return time.perf_counter() - start


def build_times(chapter: Path) -> dict[str, float]:
    """`make book` from cold, again with nothing changed, and with one chapter's code changed."""
    shutil.rmtree(ROOT / "_build", ignore_errors=True)
    times = {"cold_build_s": make_book(), "warm_build_s": make_book()}
    original = chapter.read_text()
    changed = original.replace("```{code-cell} ipython3\n", "```{code-cell} ipython3\n# benchmark edit\n", 1)
    try:
        chapter.write_text(changed)
        times["one_changed_build_s"] = make_book()
    finally:
        chapter.write_text(original)
    make_book()  # leave the cache and the pages as the sources are
    return times


def page_weight_mb(html_path: Path) -> float:
    """A page's HTML (which embeds its explorers' frames) plus the images it shows, in MB."""
    text = html_path.read_text()
    images = {html_path.parent / src for src in re.findall(r'<img[^>]+src="([^"]+)"', text)
              if not src.startswith(("http", "data:"))}
    return (len(text.encode()) + sum(p.stat().st_size for p in images if p.exists())) / 1e6


def shared_scripts_mb() -> float:
    vendor = HTML / "_static"
    return sum(p.stat().st_size for d in ("widgets", "mathjax") for p in (vendor / d).rglob("*") if p.is_file()) / 1e6


def main() -> int:
    chapters = toc_chapters()
    print(f"executing {len(chapters)} chapters alone ...", flush=True)
    rows = {p.relative_to(ROOT).as_posix(): {"chapter_s": execute_alone(p)} for p in chapters}
    print("building the book: cold, warm, one chapter changed ...", flush=True)
    builds = build_times(chapters[0])
    with serve() as base, chromium() as browser:
        for name in rows:
            page = name.removesuffix(".md") + ".html"
            report = check_page(browser, base, page)
            rows[name]["page_mb"] = page_weight_mb(HTML / page)
            rows[name]["slider_ms_median"] = statistics.median(report.slider_ms) if report.slider_ms else None
            rows[name]["slider_ms_max"] = max(report.slider_ms) if report.slider_ms else None

    over = []
    print(f"\n{'chapter':48} {'exec s':>7} {'page MB':>8} {'slider ms (median/max)':>23}")
    for name, row in rows.items():
        flags = [k for k, v in (("chapter_s", row["chapter_s"]), ("page_mb", row["page_mb"]),
                                ("slider_ms", row["slider_ms_max"])) if v is None or v > BUDGETS[k]]
        over += [f"{name}: {k}" for k in flags]
        slider = f"{row['slider_ms_median']:.0f} / {row['slider_ms_max']:.0f}" if row["slider_ms_max"] else "none"
        print(f"{name:48} {row['chapter_s']:7.1f} {row['page_mb']:8.2f} {slider:>23}"
              + ("   OVER: " + ", ".join(flags) if flags else ""))
    for key, seconds in builds.items():
        print(f"{key:48} {seconds:7.1f} s")
        if key in BUDGETS and seconds > BUDGETS[key]:
            over.append(key)
    print(f"{'vendored scripts shared by all pages':48} {shared_scripts_mb():7.2f} MB")
    print("\nall within budget" if not over else f"\nOVER BUDGET: {over}")

    result = {"chapters": rows, "builds": builds, "shared_scripts_mb": shared_scripts_mb(), "budgets": BUDGETS,
              "over_budget": over}
    (ROOT / "_build" / "bench.json").write_text(json.dumps(result, indent=2))
    print(f"written to {(ROOT / '_build' / 'bench.json').relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
