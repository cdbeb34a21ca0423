"""Test-only oracle shared by the symbolic tests: any term of lib.symbolic translated to sympy through the term
interface only (so it works for every representation)."""

import sympy

from lib.symbolic import arguments, iscall, operation

SYMPY_OPS = {"sin": sympy.sin, "cos": sympy.cos, "tan": sympy.tan, "exp": sympy.exp, "log": sympy.log}


def to_sympy(x):
    """Translate any term to sympy through the term interface only."""
    if isinstance(x, bool):
        raise TypeError
    if isinstance(x, int):
        return sympy.Integer(x)
    if isinstance(x, float):
        return sympy.Rational(x)
    if not iscall(x):
        return sympy.Symbol(x.name)
    op, args = operation(x), [to_sympy(a) for a in arguments(x)]
    if op == "+":
        return sympy.Add(*args)
    if op == "*":
        return sympy.Mul(*args)
    if op == "^":
        return args[0] ** args[1]
    if op == "/":
        return args[0] / args[1]
    if op == "-":
        return -args[0] if len(args) == 1 else args[0] - args[1]
    return SYMPY_OPS[op](*args)
