"""The first two steps of `make book`: execute every chapter into the jupyter-cache, then write the scoreboard.

    python -m lib.book.build            # execute what changed (both cores), then summarize
    python -m lib.book.build --force    # execute every chapter again

The third step, rendering, is `jupyter-book build -W -n --keep-going .`, which reads the same cache (BOOK.md §5).
A chapter that fails stops the build here, naming the chapter and the failing cell. jupyter-cache keys a chapter
on its code cells only, so each chapter also gets a key of the `lib/` files it imports (directly or through other
`lib` modules; `lib/book` always) and the requirements: when that key changes, the chapter executes again, and a
change to one module re-executes only the chapters that use it.
"""

import argparse
import hashlib
import json
import logging
import os
import re
import shutil
import sys
from pathlib import Path

import yaml

from lib.book.scoreboard import ChapterResult, chapter_result, write_scoreboard

ROOT = Path(__file__).resolve().parents[2]
CACHE = ROOT / "_build" / ".jupyter_cache"
KEYS = CACHE.parent / ".jupyter_cache.keys.json"
CELL_TIMEOUT_SECONDS = 300
CHAPTER_BUDGET_SECONDS = 45
ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*m")
LIB_MODULE_IMPORT = re.compile(r"^[ \t]*(?:from|import)[ \t]+(lib(?:\.\w+)+)", re.MULTILINE)
FROM_LIB_IMPORT = re.compile(r"^[ \t]*from[ \t]+lib[ \t]+import[ \t]+(\([^)]*\)|.*)", re.MULTILINE)
MYST_READER = {"name": "myst_nb_md", "type": "plugin"}
# Chapters execute two at a time, one thread each (BOOK.md §6).
ONE_THREAD = {name: "1" for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")}


def toc_chapters(toc_path: Path = ROOT / "_toc.yml") -> list[Path]:
    """The chapter files listed in the table of contents, in book order."""
    toc = yaml.safe_load(toc_path.read_text())
    files = [entry["file"] for part in toc.get("parts", []) for entry in part.get("chapters", [])]
    return [ROOT / f"{name}.md" for name in files if name.startswith("chapters/")]


def imported_lib_modules(source: str) -> set[str]:
    """The `lib` modules that the import statements of `source` name (`from lib import x` names `lib.x`)."""
    modules = set(LIB_MODULE_IMPORT.findall(source))
    for names in FROM_LIB_IMPORT.findall(source):
        modules.update(f"lib.{name.split()[0]}" for name in names.strip("()").split(",") if name.strip())
    return modules


def module_files(module: str, root: Path) -> list[Path]:
    """The source files of a `lib` module: its file, or every file of a package."""
    path = root.joinpath(*module.split("."))
    if path.is_dir():
        return sorted(path.glob("**/*.py"))
    return [file] if (file := path.with_suffix(".py")).exists() else []


def chapter_dependencies(chapter: Path, root: Path = ROOT) -> list[Path]:
    """The `lib/` files a chapter imports, directly or through other `lib` modules, all of `lib/book` and
    `lib/__init__.py`."""
    pending, seen_modules = imported_lib_modules(chapter.read_text()) | {"lib.book"}, set()
    files = {init for init in [root / "lib" / "__init__.py"] if init.exists()}
    while pending:
        module = pending.pop()
        seen_modules.add(module)
        for file in module_files(module, root):
            if file not in files:
                files.add(file)
                pending |= imported_lib_modules(file.read_text()) - seen_modules
    return sorted(files)


def chapter_key(chapter: Path, root: Path = ROOT) -> str:
    """A hash of everything outside a chapter's code cells that can change its output: the `lib/` files it
    depends on and the pinned requirements."""
    digest = hashlib.sha256()
    for path in chapter_dependencies(chapter, root) + [root / "requirements.txt", root / "pyproject.toml"]:
        digest.update(str(path.relative_to(root)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def open_cache(force: bool):
    """Open the cache, emptying it first when forced."""
    from jupyter_cache import get_cache

    if force:
        shutil.rmtree(CACHE, ignore_errors=True)
        KEYS.unlink(missing_ok=True)
    CACHE.parent.mkdir(parents=True, exist_ok=True)
    return get_cache(str(CACHE))


def forget_stale_executions(cache, chapters: list[Path]) -> list[Path]:
    """Drop every cached execution of the chapters whose dependency key changed; return those chapters."""
    old = json.loads(KEYS.read_text()) if KEYS.exists() else {}
    keys = {path: chapter_key(path, ROOT) for path in chapters}
    stale = [path for path in chapters if old.get(str(path.relative_to(ROOT))) != keys[path]]
    stale_uris = {str(path) for path in stale}
    for record in cache.list_cache_records():
        if record.uri in stale_uris:
            cache.remove_cache(record.pk)
    KEYS.write_text(json.dumps({str(path.relative_to(ROOT)): key for path, key in keys.items()}, indent=1))
    return stale


def sync_project(cache, chapters: list[Path]) -> None:
    """Make the cache's project list exactly the chapters of the table of contents."""
    wanted = {str(path) for path in chapters}
    for record in cache.list_project_records():
        if record.uri not in wanted:
            cache.remove_nb_from_project(record.uri)
    for path in chapters:
        cache.add_nb_to_project(str(path), read_data=MYST_READER)


def execute(cache, chapters: list[Path]) -> list[str]:
    """Execute the chapters whose code changed, two at a time; return the failures as readable messages."""
    from jupyter_cache.executors import load_executor

    logger = logging.getLogger("lib.book.build")
    os.environ.update(ONE_THREAD)
    executor = load_executor("local-parallel", cache=cache, logger=logger)
    executor.run_and_cache(filter_uris=[str(p) for p in chapters], timeout=CELL_TIMEOUT_SECONDS)
    failures = []
    for path in chapters:
        if cache.get_cached_project_nb(str(path)) is None:
            traceback = cache.get_project_record(str(path)).traceback or "no traceback recorded"
            failures.append(f"{path.relative_to(ROOT)} failed to execute:\n{ANSI_ESCAPE.sub('', traceback)}")
    return failures


def collect(cache, chapters: list[Path]) -> list[ChapterResult]:
    """Read the claims and execution time of every executed chapter from the cache."""
    results = []
    for path in chapters:
        record = cache.get_cached_project_nb(str(path))
        source = cache.get_project_notebook(str(path)).nb
        executed = cache.get_cache_bundle(record.pk).nb
        seconds = record.data["execution_seconds"]
        results.append(chapter_result(path.relative_to(ROOT), source, executed, seconds))
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--force", action="store_true", help="execute every chapter again")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    chapters = toc_chapters()
    missing = [str(p.relative_to(ROOT)) for p in chapters if not p.exists()]
    if missing:
        print(f"_toc.yml lists chapters that do not exist: {missing}", file=sys.stderr)
        return 1
    cache = open_cache(args.force)
    sync_project(cache, chapters)
    stale = forget_stale_executions(cache, chapters)
    if stale:
        print(f"{len(stale)} chapter(s) depend on changed lib/ files or requirements and execute again")
    failures = execute(cache, chapters)
    if failures:
        print("\n\n".join(["BUILD FAILED: chapters that did not execute", *failures]), file=sys.stderr)
        return 1
    results = collect(cache, chapters)
    write_scoreboard(results, ROOT / "scoreboard.md", ROOT / "_build" / "scoreboard.json")
    for result in results:
        flag = "  OVER BUDGET" if result.seconds > CHAPTER_BUDGET_SECONDS else ""
        print(f"{result.seconds:6.1f} s  {result.path}  ({result.summary}){flag}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
