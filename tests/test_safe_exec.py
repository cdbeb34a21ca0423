"""Tests of lib/safe_exec.py: correct results against running the same function directly, and every escape a
generated program might try (files, imports, dunder attributes, infinite loops, memory bombs, crashes) contained
with a clear error, without stopping the programs after it."""

import math

import pytest

from lib.safe_exec import ExecResult, UnsafeProgram, check_program, safe_execute, safe_execute_many

GOOD = """
import math

def solve(a, b):
    total = 0
    for i in range(a):
        total += i * b
    return math.sqrt(total) if total > 0 else 0.0
"""


def reference(a, b):
    total = sum(i * b for i in range(a))
    return math.sqrt(total) if total > 0 else 0.0


def test_results_equal_direct_execution():
    cases = [(3, 4), (10, 7), (0, 5), (25, 2)]
    results = safe_execute_many([GOOD] * len(cases), args=cases)
    assert [r.value for r in results] == [reference(*c) for c in cases]
    assert all(r.ok and r.error == "" for r in results)


@pytest.mark.parametrize(
    ("source", "reason"),
    [
        ("import os\ndef solve():\n    return os.listdir('.')", "imports"),
        ("def solve():\n    return open('/etc/passwd').read()", "open"),
        ("def solve():\n    return ().__class__.__bases__", "'_'"),
        ("def solve():\n    return eval('1+1')", "eval"),
        ("def solve():\n    return getattr(1, 'real')", "getattr"),
        ("class A:\n    pass\ndef solve():\n    return 1", "ClassDef"),
        ("def solve():\n    with x:\n        pass", "With"),
        ("def solve():\n    return (lambda: 1)()", "Lambda"),
        ("def solve(:\n", "syntax error"),
        ("from math import sqrt\ndef solve():\n    return sqrt(4)", "ImportFrom"),
    ],
)
def test_unsafe_programs_are_rejected_before_running(source, reason):
    with pytest.raises(UnsafeProgram, match=reason):
        check_program(source)
    result = safe_execute(source)
    assert not result.ok and result.error.startswith("rejected") and reason in result.error


def test_runaway_programs_are_stopped_and_the_rest_still_run():
    loop = "def solve():\n    while True:\n        pass"
    c_loop = "def solve():\n    return sum(range(10 ** 11))"  # one C call: no signal can interrupt it
    memory = "def solve():\n    return [0] * (10 ** 10)"
    crash = "def solve():\n    return 1 / 0"
    missing = "def other():\n    return 1"
    results = safe_execute_many([loop, GOOD, c_loop, memory, crash, missing, GOOD], args=[(), (3, 4), (), (), (),
                                (), (5, 5)], time_limit=0.5, memory_mb=256)
    assert not results[0].ok and "time limit" in results[0].error
    assert results[1] == ExecResult(True, reference(3, 4))
    assert results[2] == ExecResult(False, error="time limit exceeded (worker killed)")
    assert not results[3].ok and "memory" in results[3].error
    assert not results[4].ok and "ZeroDivisionError" in results[4].error
    assert not results[5].ok and "no function 'solve'" in results[5].error
    assert results[6] == ExecResult(True, reference(5, 5))


def test_builtins_are_restricted_at_run_time_too():
    # __import__ of anything but math fails even if the tree check were bypassed
    result = safe_execute("import math\ndef solve():\n    return math.floor(2.5)")
    assert result == ExecResult(True, 2)
    assert not safe_execute("def solve():\n    return print").ok


def test_bad_arguments():
    with pytest.raises(ValueError, match="time_limit"):
        safe_execute(GOOD, time_limit=0)
    with pytest.raises(ValueError, match="memory_mb"):
        safe_execute(GOOD, memory_mb=1)
    with pytest.raises(ValueError, match="one tuple per program"):
        safe_execute_many([GOOD, GOOD], args=[(1, 2)])
    with pytest.raises(TypeError, match="source"):
        check_program(42)
