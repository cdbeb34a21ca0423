"""Run generated programs safely: a whitelist check of the syntax tree, then execution in a separate process with
restricted built-ins, no imports beyond ``math``, a CPU-time and memory limit, and a wall-clock time limit.

The language-model chapters execute programs that a (simulated) model wrote. Such code must not touch files or the
network, and must not hang the book. Two layers keep it contained:

1. :func:`check_program` rejects, before anything runs, imports other than ``math``, names and attributes that
   start with an underscore (the usual escape hatches such as ``__class__``), and calls of ``open``, ``eval``,
   ``exec`` and the like. The whitelist is of syntax-node types, so anything unusual (``with``, ``class``,
   ``lambda``, ``global``, ``try``, ``async``, ...) is rejected too.
2. :func:`safe_execute_many` runs the programs in a forked worker process whose built-ins are a short list of
   pure functions, under ``resource`` limits; a program that exceeds its time limit is stopped, and a worker that
   does not answer in time is killed and replaced.
"""

from __future__ import annotations

import ast
import builtins
import math
import multiprocessing as mp
import resource
import signal
from collections.abc import Sequence
from dataclasses import dataclass

ALLOWED_MODULES = frozenset({"math"})
SAFE_BUILTINS = {
    name: getattr(builtins, name)
    for name in (
        "abs", "all", "any", "bool", "dict", "divmod", "enumerate", "filter", "float", "int", "isinstance", "len",
        "list", "map", "max", "min", "pow", "range", "reversed", "round", "set", "sorted", "str", "sum", "tuple",
        "zip", "ValueError", "ZeroDivisionError", "ArithmeticError", "Exception",
    )
}
ALLOWED_NODES = (
    ast.Module, ast.FunctionDef, ast.arguments, ast.arg, ast.Return, ast.Assign, ast.AugAssign, ast.AnnAssign,
    ast.For, ast.While, ast.If, ast.Break, ast.Continue, ast.Pass, ast.Expr, ast.Import, ast.alias,
    ast.BoolOp, ast.BinOp, ast.UnaryOp, ast.Compare, ast.IfExp, ast.Call, ast.keyword, ast.Constant,
    ast.Name, ast.Load, ast.Store, ast.Attribute, ast.Subscript, ast.Slice, ast.List, ast.Tuple, ast.Dict, ast.Set,
    ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp, ast.comprehension,
    ast.And, ast.Or, ast.Not, ast.USub, ast.UAdd, ast.Add, ast.Sub, ast.Mult, ast.Div, ast.FloorDiv, ast.Mod,
    ast.Pow, ast.Eq, ast.NotEq, ast.Lt, ast.LtE, ast.Gt, ast.GtE, ast.In, ast.NotIn, ast.Is, ast.IsNot,
)
FORBIDDEN_CALLS = frozenset({
    "open", "eval", "exec", "compile", "input", "globals", "locals", "vars", "getattr", "setattr", "delattr",
    "breakpoint", "help", "memoryview", "type", "object", "super", "classmethod", "staticmethod", "property",
})


class UnsafeProgram(ValueError):
    """The program uses a construct outside the whitelist of :func:`check_program`."""


@dataclass(frozen=True)
class ExecResult:
    """Outcome of one program: ``ok`` with ``value`` (the entry function's return value), or ``error``."""

    ok: bool
    value: object = None
    error: str = ""


def check_program(source: str) -> ast.Module:
    """Parse ``source`` and raise :class:`UnsafeProgram` unless it only uses whitelisted constructs."""
    if not isinstance(source, str):
        raise TypeError(f"source must be a str, got {type(source).__name__}")
    try:
        tree = ast.parse(source)
    except SyntaxError as error:
        raise UnsafeProgram(f"syntax error: {error.msg} (line {error.lineno})") from None
    for node in ast.walk(tree):
        if not isinstance(node, ALLOWED_NODES):
            raise UnsafeProgram(f"{type(node).__name__} is not allowed")
        if isinstance(node, ast.Import) and any(alias.name not in ALLOWED_MODULES for alias in node.names):
            raise UnsafeProgram(f"only these imports are allowed: {sorted(ALLOWED_MODULES)}")
        name = node.id if isinstance(node, ast.Name) else node.attr if isinstance(node, ast.Attribute) else None
        if name is not None and name.startswith("_"):
            raise UnsafeProgram(f"names starting with '_' are not allowed: {name!r}")
        if isinstance(node, ast.Name) and name in FORBIDDEN_CALLS:
            raise UnsafeProgram(f"{name!r} is not allowed")
        if isinstance(node, ast.FunctionDef) and node.decorator_list:
            raise UnsafeProgram("decorators are not allowed")
    return tree


def _run_one(source: str, entry: str, args: tuple, cpu_seconds: float) -> ExecResult:
    """Execute one checked program in this (worker) process under an interval timer."""
    namespace: dict = {"__builtins__": dict(SAFE_BUILTINS, __import__=_import_math)}
    signal.setitimer(signal.ITIMER_VIRTUAL, cpu_seconds)
    try:
        exec(compile(source, "<program>", "exec"), namespace)  # noqa: S102 -- checked by check_program
        function = namespace.get(entry)
        if not callable(function):
            return ExecResult(False, error=f"the program defines no function {entry!r}")
        return ExecResult(True, value=function(*args))
    except _TimeLimit:
        return ExecResult(False, error="time limit exceeded")
    except MemoryError:
        return ExecResult(False, error="memory limit exceeded")
    except Exception as error:  # noqa: BLE001 -- any failure of the program is its result
        return ExecResult(False, error=f"{type(error).__name__}: {error}")
    finally:
        signal.setitimer(signal.ITIMER_VIRTUAL, 0)


class _TimeLimit(Exception):
    pass


def _raise_time_limit(signum, frame):
    raise _TimeLimit


def _import_math(name, *args, **kwargs):
    if name not in ALLOWED_MODULES:
        raise ImportError(f"import of {name!r} is not allowed")
    return math


def _worker(connection, cpu_seconds: float, memory_bytes: int) -> None:
    resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
    signal.signal(signal.SIGVTALRM, _raise_time_limit)
    while True:
        job = connection.recv()
        if job is None:
            return
        source, entry, args = job
        result = _run_one(source, entry, args, cpu_seconds)
        try:
            connection.send(result)
        except Exception as error:  # noqa: BLE001 -- e.g. an unpicklable return value
            connection.send(ExecResult(False, error=f"result cannot be returned: {error}"))


class _Worker:
    def __init__(self, cpu_seconds: float, memory_bytes: int):
        context = mp.get_context("fork")
        self.connection, child = context.Pipe()
        self.process = context.Process(target=_worker, args=(child, cpu_seconds, memory_bytes), daemon=True)
        self.process.start()

    def run(self, job: tuple, wall_seconds: float) -> ExecResult | None:
        self.connection.send(job)
        if self.connection.poll(wall_seconds):
            try:
                return self.connection.recv()
            except EOFError:
                return ExecResult(False, error="the program crashed its process")
        return None

    def stop(self, kill: bool = False) -> None:
        if kill:
            self.process.kill()
        else:
            try:
                self.connection.send(None)
            except (BrokenPipeError, OSError):
                self.process.kill()
        self.process.join(timeout=5)
        self.connection.close()


def safe_execute_many(
    programs: Sequence[str],
    *,
    entry: str = "solve",
    args: Sequence[tuple] | None = None,
    time_limit: float = 1.0,
    memory_mb: int = 512,
) -> list[ExecResult]:
    """Run ``entry(*args[i])`` of every program ``programs[i]`` in a sandboxed worker process.

    Programs that fail :func:`check_program` are not run (their result names the reason). Each program gets
    ``time_limit`` seconds of CPU time (and 2 x that plus one second of wall time before its worker is killed and
    replaced) and ``memory_mb`` megabytes of address space. Return values must be picklable (numbers, strings,
    lists, ...).
    """
    if not time_limit > 0:
        raise ValueError(f"time_limit must be > 0 seconds, got {time_limit}")
    if isinstance(memory_mb, bool) or not isinstance(memory_mb, int) or memory_mb < 64:
        raise ValueError(f"memory_mb must be an int >= 64, got {memory_mb!r}")
    args = [()] * len(programs) if args is None else list(args)
    if len(args) != len(programs):
        raise ValueError(f"args must have one tuple per program: {len(args)} for {len(programs)} programs")
    results: list[ExecResult] = []
    worker: _Worker | None = None
    try:
        for source, call_args in zip(programs, args, strict=True):
            try:
                check_program(source)
            except UnsafeProgram as error:
                results.append(ExecResult(False, error=f"rejected: {error}"))
                continue
            worker = worker or _Worker(time_limit, memory_mb * 2**20)
            result = worker.run((source, entry, tuple(call_args)), 2 * time_limit + 1.0)
            if result is None or not worker.process.is_alive():
                worker.stop(kill=True)
                worker = None
                result = result or ExecResult(False, error="time limit exceeded (worker killed)")
            results.append(result)
    finally:
        if worker is not None:
            worker.stop()
    return results


def safe_execute(source: str, *, entry: str = "solve", args: tuple = (), time_limit: float = 1.0,
                 memory_mb: int = 512) -> ExecResult:
    """Run one program; see :func:`safe_execute_many`."""
    return safe_execute_many([source], entry=entry, args=[args], time_limit=time_limit, memory_mb=memory_mb)[0]
