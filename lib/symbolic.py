"""Symbolic terms behind one small interface: two representations, rule-based rewriting, tracing, code generation.

Everything that walks or rewrites an expression goes through four functions, the *term interface*:
``iscall(x)``, ``operation(x)``, ``arguments(x)`` and ``maketerm(template, op, args)``. Two representations
implement it:

* the *tree form* (``TreeSym`` leaves, ``Tree`` calls): ``a + b`` builds the call ``+(a, b)`` and nothing else;
* the *dictionary form* (``Sym`` leaves, ``Add``, ``Mul``, ``Term``): a sum is ``const + sum_k coeff_k * term_k``
  stored as a dict ``{term: coeff}`` and a product ``coeff * prod_k base_k ^ exp_k`` as ``{base: exp}``, so like
  terms merge while the expression is built.

Arithmetic dispatches on the types of *both* operands through ``BinaryDispatch``, a two-argument dispatch table:
the Python stand-in for Julia's multiple dispatch.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import singledispatch

import numpy as np

FUNCTIONS: dict[str, Callable] = {
    "sin": np.sin, "cos": np.cos, "tan": np.tan, "exp": np.exp, "log": np.log,
    "log1p": np.log1p, "atan": np.arctan, "abs": np.abs,
}
ARITHMETIC = ("+", "*", "^", "/", "-")


def is_number(x: object) -> bool:
    """True for int and float constants (bools are not numbers here)."""
    return isinstance(x, int | float) and not isinstance(x, bool)


class BinaryDispatch:
    """A function of two arguments whose method is chosen by the types of *both* arguments.

    Methods are registered for a pair of classes; a call picks the registered pair closest to the argument types
    (smallest sum of positions in the two method-resolution orders, ties to the left argument) and caches it.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self._methods: dict[tuple[type, type], Callable] = {}
        self._cache: dict[tuple[type, type], Callable] = {}

    def register(self, left: type, right: type) -> Callable[[Callable], Callable]:
        def decorator(method: Callable) -> Callable:
            self._methods[(left, right)] = method
            self._cache.clear()
            return method
        return decorator

    def _resolve(self, left: type, right: type) -> Callable:
        candidates = [(i + j, i, method) for i, a in enumerate(left.__mro__) for j, b in enumerate(right.__mro__)
                      if (method := self._methods.get((a, b))) is not None]
        if not candidates:
            raise TypeError(f"{self.name} is not defined for ({left.__name__}, {right.__name__})")
        return min(candidates, key=lambda c: c[:2])[2]

    def __call__(self, a: object, b: object) -> object:
        key = (type(a), type(b))
        method = self._cache.get(key)
        if method is None:
            method = self._cache[key] = self._resolve(*key)
        return method(a, b)


add = BinaryDispatch("add")
mul = BinaryDispatch("mul")
sub = BinaryDispatch("sub")
div = BinaryDispatch("div")
power = BinaryDispatch("power")


class Expr:
    """Base class of symbolic expressions: Python operators forward to the dispatch tables."""

    __slots__ = ()

    def __add__(self, other): return add(self, other)
    def __radd__(self, other): return add(other, self)
    def __sub__(self, other): return sub(self, other)
    def __rsub__(self, other): return sub(other, self)
    def __mul__(self, other): return mul(self, other)
    def __rmul__(self, other): return mul(other, self)
    def __truediv__(self, other): return div(self, other)
    def __rtruediv__(self, other): return div(other, self)
    def __pow__(self, other): return power(self, other)
    def __rpow__(self, other): return power(other, self)
    def __neg__(self): return mul(-1, self)

    def __repr__(self) -> str:
        return to_string(self)


class TreeExpr(Expr):
    """Tree-form expressions: arithmetic builds plain calls."""

    __slots__ = ()

    def __neg__(self): return Tree("-", (self,))


class DictExpr(Expr):
    """Dictionary-form expressions: arithmetic merges like terms at construction."""

    __slots__ = ()


class _Leaf:
    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        if not isinstance(name, str) or not name:
            raise ValueError(f"name must be a non-empty string, got {name!r}")
        self.name = name

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other.name == self.name

    def __hash__(self) -> int:
        return hash((type(self).__name__, self.name))


class Sym(_Leaf, DictExpr):
    """A symbol of the dictionary form."""

    __slots__ = ()


class TreeSym(_Leaf, TreeExpr):
    """A symbol of the tree form."""

    __slots__ = ()


class Temporary(Sym):
    """A temporary variable made by common-subexpression elimination (never equal to a user symbol)."""

    __slots__ = ()


class Slot(_Leaf, TreeExpr):
    """A pattern variable: matches any term (that satisfies ``predicate``); equal names must match equal terms."""

    __slots__ = ("predicate",)

    def __init__(self, name: str, predicate: Callable[[object], bool] | None = None) -> None:
        super().__init__(name)
        self.predicate = predicate


class _Call:
    __slots__ = ("op", "args", "_hash")

    def __init__(self, op: str, args: Iterable) -> None:
        if not isinstance(op, str) or not op:
            raise ValueError(f"op must be a non-empty string, got {op!r}")
        self.op = op
        self.args = tuple(args)
        self._hash = hash((op, self.args))

    def __eq__(self, other: object) -> bool:
        return (type(other) is type(self) and other._hash == self._hash and other.op == self.op
                and other.args == self.args)

    def __hash__(self) -> int:
        return self._hash


class Tree(_Call, TreeExpr):
    """A call ``op(args...)`` of the tree form."""

    __slots__ = ()


class Term(_Call, DictExpr):
    """A call of the dictionary form that is neither a sum nor a product (``sin(x)``, ``x ^ y``)."""

    __slots__ = ()


class Add(DictExpr):
    """``const + sum(coeff * term for term, coeff in terms.items())``; build it with ``make_add``."""

    __slots__ = ("const", "terms", "_hash")

    def __init__(self, const: float, terms: dict) -> None:
        self.const = const
        self.terms = terms
        self._hash = None

    def __eq__(self, other: object) -> bool:
        return (type(other) is Add and hash(other) == hash(self) and other.const == self.const
                and other.terms == self.terms)

    def __hash__(self) -> int:
        if self._hash is None:
            self._hash = hash(("+", self.const, frozenset(self.terms.items())))
        return self._hash


class Mul(DictExpr):
    """``coeff * prod(base ** exp for base, exp in factors.items())``; build it with ``make_mul``."""

    __slots__ = ("coeff", "factors", "_hash")

    def __init__(self, coeff: float, factors: dict) -> None:
        self.coeff = coeff
        self.factors = factors
        self._hash = None

    def __eq__(self, other: object) -> bool:
        return (type(other) is Mul and hash(other) == hash(self) and other.coeff == self.coeff
                and other.factors == self.factors)

    def __hash__(self) -> int:
        if self._hash is None:
            self._hash = hash(("*", self.coeff, frozenset(self.factors.items())))
        return self._hash


def symbols(names: str, form: str = "dict") -> tuple:
    """Symbols named by the space-separated ``names``, as ``Sym`` (form "dict") or ``TreeSym`` (form "tree")."""
    kinds = {"dict": Sym, "tree": TreeSym}
    if form not in kinds:
        raise ValueError(f"form must be one of {sorted(kinds)}, got {form!r}")
    if not isinstance(names, str) or not names.split():
        raise ValueError(f"names must be a non-empty space-separated string, got {names!r}")
    return tuple(kinds[form](name) for name in names.split())


def slots(names: str, predicate: Callable[[object], bool] | None = None) -> tuple[Slot, ...]:
    """Pattern variables named by the space-separated ``names``."""
    if not isinstance(names, str) or not names.split():
        raise ValueError(f"names must be a non-empty space-separated string, got {names!r}")
    return tuple(Slot(name, predicate) for name in names.split())


# ---------------------------------------------------------------- the dictionary form: canonical constructors


def make_add(const: float, terms: dict) -> object:
    """The simplest term equal to ``const + sum(c * t)``: drops zero coefficients, unwraps single terms."""
    terms = {t: c for t, c in terms.items() if c != 0}
    if not terms:
        return const
    if const == 0 and len(terms) == 1:
        (term, coeff), = terms.items()
        return term if coeff == 1 else _scale(term, coeff)
    return Add(const, terms)


def make_mul(coeff: float, factors: dict) -> object:
    """The simplest term equal to ``coeff * prod(b ** e)``: drops zero exponents, unwraps single factors."""
    factors = {b: e for b, e in factors.items() if e != 0}
    if coeff == 0:
        return 0
    if not factors:
        return coeff
    if coeff == 1 and len(factors) == 1:
        (base, exponent), = factors.items()
        if exponent == 1:
            return base
    return Mul(coeff, factors)


def _scale(term: object, coeff: float) -> object:
    if isinstance(term, Mul):
        return make_mul(coeff * term.coeff, term.factors)
    return Mul(coeff, {term: 1})


def _as_add(x: object) -> tuple[float, dict]:
    if is_number(x):
        return x, {}
    if isinstance(x, Add):
        return x.const, x.terms
    if isinstance(x, Mul) and x.coeff != 1:
        return 0, {make_mul(1, x.factors): x.coeff}
    return 0, {x: 1}


def _as_mul(x: object) -> tuple[float, dict]:
    if is_number(x):
        return x, {}
    if isinstance(x, Mul):
        return x.coeff, x.factors
    return 1, {x: 1}


def _merge(big: dict, small: dict) -> dict:
    if len(big) < len(small):
        big, small = small, big
    merged = dict(big)
    for key, value in small.items():
        merged[key] = merged.get(key, 0) + value
    return merged


def _add_dict(a: object, b: object) -> object:
    const_a, terms_a = _as_add(a)
    const_b, terms_b = _as_add(b)
    return make_add(const_a + const_b, _merge(terms_a, terms_b))


def _mul_dict(a: object, b: object) -> object:
    if is_number(a) and isinstance(b, Add):
        a, b = b, a
    if is_number(b) and isinstance(a, Add):
        return make_add(a.const * b, {t: c * b for t, c in a.terms.items()}) if b != 0 else 0
    coeff_a, factors_a = _as_mul(a)
    coeff_b, factors_b = _as_mul(b)
    return make_mul(coeff_a * coeff_b, _merge(factors_a, factors_b))


def _power_dict(base: object, exponent: object) -> object:
    if not is_number(exponent) or is_number(base):
        return Term("^", (base, exponent))
    if isinstance(base, Mul):
        if not isinstance(exponent, int):
            return make_mul(1, {base: exponent})
        return make_mul(base.coeff ** exponent, {b: e * exponent for b, e in base.factors.items()})
    return make_mul(1, {base: exponent})


def _reject_mix(a: object, b: object) -> object:
    raise TypeError(f"cannot combine the tree form ({type(a).__name__}) with the dictionary form "
                    f"({type(b).__name__}); build an expression from one form")


for _table, _op in ((add, "+"), (mul, "*"), (sub, "-"), (div, "/"), (power, "^")):
    _table.register(TreeExpr, object)(lambda a, b, _op=_op: Tree(_op, (a, b)))
    _table.register(object, TreeExpr)(lambda a, b, _op=_op: Tree(_op, (a, b)))
    _table.register(TreeExpr, DictExpr)(_reject_mix)
    _table.register(DictExpr, TreeExpr)(_reject_mix)

for _left, _right in ((DictExpr, object), (object, DictExpr), (DictExpr, DictExpr)):
    add.register(_left, _right)(_add_dict)
    mul.register(_left, _right)(_mul_dict)
    sub.register(_left, _right)(lambda a, b: _add_dict(a, _mul_dict(-1, b)))
    div.register(_left, _right)(lambda a, b: _mul_dict(a, _power_dict(b, -1)))
    power.register(_left, _right)(_power_dict)


def apply(op: str, *args: object) -> object:
    """The call ``op(*args)`` in the form of its arguments (a number if all arguments are numbers)."""
    if op not in FUNCTIONS:
        raise ValueError(f"op must be one of {sorted(FUNCTIONS)}, got {op!r}")
    if all(is_number(a) for a in args):
        return float(FUNCTIONS[op](*args))
    if any(isinstance(a, TreeExpr) for a in args):
        return Tree(op, args)
    return Term(op, args)


# ---------------------------------------------------------------- the term interface


@singledispatch
def iscall(x: object) -> bool:
    """True if ``x`` is a call (has an operation and arguments), False for symbols and numbers."""
    if is_number(x):
        return False
    raise TypeError(f"x must be a number or a symbolic expression, got {type(x).__name__}")


@iscall.register
def _(x: _Leaf) -> bool:
    return False


@iscall.register(_Call)
@iscall.register(Add)
@iscall.register(Mul)
def _(x) -> bool:
    return True


def _not_a_call(x: object) -> None:
    raise TypeError(f"x must be a call (iscall(x) is True), got {x!r}")


@singledispatch
def operation(x: object) -> str:
    """The operation of a call: "+", "*", "^", "/", "-" or a function name."""
    _not_a_call(x)


@operation.register
def _(x: _Call) -> str:
    return x.op


@operation.register
def _(x: Add) -> str:
    return "+"


@operation.register
def _(x: Mul) -> str:
    return "^" if x.coeff == 1 and len(x.factors) == 1 else "*"


@singledispatch
def arguments(x: object) -> tuple:
    """The arguments of a call, as a tuple."""
    _not_a_call(x)


@arguments.register
def _(x: _Call) -> tuple:
    return x.args


@arguments.register
def _(x: Add) -> tuple:
    pieces = [] if x.const == 0 else [x.const]
    return tuple(pieces + [t if c == 1 else _scale(t, c) for t, c in x.terms.items()])


@arguments.register
def _(x: Mul) -> tuple:
    if x.coeff == 1 and len(x.factors) == 1:
        return next(iter(x.factors.items()))
    pieces = [] if x.coeff == 1 else [x.coeff]
    return tuple(pieces + [b if e == 1 else Mul(1, {b: e}) for b, e in x.factors.items()])


@singledispatch
def maketerm(template: object, op: str, args: Sequence) -> object:
    """Build the call ``op(*args)`` in the representation of ``template`` (so rewriters keep representations)."""
    raise TypeError(f"template must be a symbolic call, got {type(template).__name__}")


@maketerm.register
def _(template: TreeExpr, op: str, args: Sequence) -> object:
    return Tree(op, args)


@maketerm.register
def _(template: DictExpr, op: str, args: Sequence) -> object:
    args = tuple(args)
    if op == "+":
        result = 0
        for arg in args:
            result = _add_dict(result, arg)
        return result
    if op == "*":
        result = 1
        for arg in args:
            result = _mul_dict(result, arg)
        return result
    if op == "^" and len(args) == 2:
        return _power_dict(*args)
    if op == "-" and len(args) in (1, 2):
        return _mul_dict(-1, args[0]) if len(args) == 1 else _add_dict(args[0], _mul_dict(-1, args[1]))
    if op == "/" and len(args) == 2:
        return _mul_dict(args[0], _power_dict(args[1], -1))
    return Term(op, args)


def to_string(x: object) -> str:
    """A readable infix string of any term, written through the term interface."""
    if is_number(x):
        return repr(x) if x >= 0 else f"({x!r})"
    if not iscall(x):
        return x.name if not isinstance(x, Slot) else f"~{x.name}"
    op, args = operation(x), arguments(x)
    if op in ARITHMETIC:
        if len(args) == 1:
            return f"(-{to_string(args[0])})"
        return "(" + f" {op} ".join(to_string(a) for a in args) + ")"
    return f"{op}(" + ", ".join(to_string(a) for a in args) + ")"


# ---------------------------------------------------------------- evaluation


def _check_environment(env: dict) -> None:
    if not isinstance(env, dict):
        raise TypeError(f"env must be a dict from symbols to values, got {type(env).__name__}")


def _apply_numeric(op: str, values: list) -> object:
    if op == "+":
        return sum(values[1:], start=values[0])
    if op == "*":
        result = values[0]
        for v in values[1:]:
            result = result * v
        return result
    if op == "^":
        return values[0] ** values[1]
    if op == "/":
        return values[0] / values[1]
    if op == "-":
        return -values[0] if len(values) == 1 else values[0] - values[1]
    if op in FUNCTIONS:
        return FUNCTIONS[op](*values)
    raise ValueError(f"unknown operation {op!r}; known are {list(ARITHMETIC) + sorted(FUNCTIONS)}")


def evaluate(expr: object, env: dict) -> object:
    """The numeric value of ``expr`` with symbols replaced by ``env[symbol]`` (numbers or numpy arrays)."""
    _check_environment(env)
    memo: dict = {}

    def value(x: object) -> object:
        if is_number(x):
            return x
        if not iscall(x):
            if x not in env:
                raise ValueError(f"env has no value for the symbol {x!r}")
            return env[x]
        if x not in memo:
            memo[x] = _apply_numeric(operation(x), [value(a) for a in arguments(x)])
        return memo[x]

    return value(expr)


# ---------------------------------------------------------------- rewriting through the interface


def match(pattern: object, term: object, bindings: dict | None = None) -> dict | None:
    """Bindings of the slots of ``pattern`` that make it equal to ``term`` (None if it does not match)."""
    bindings = {} if bindings is None else bindings
    if isinstance(pattern, Slot):
        if pattern.name in bindings:
            return bindings if bindings[pattern.name] == term else None
        if pattern.predicate is not None and not pattern.predicate(term):
            return None
        return {**bindings, pattern.name: term}
    if is_number(pattern):
        return bindings if is_number(term) and term == pattern else None
    if not iscall(pattern):
        return bindings if pattern == term else None
    if not iscall(term) or operation(term) != operation(pattern):
        return None
    pattern_args, term_args = arguments(pattern), arguments(term)
    if len(pattern_args) != len(term_args):
        return None
    for p, t in zip(pattern_args, term_args, strict=True):
        bindings = match(p, t, bindings)
        if bindings is None:
            return None
    return bindings


def substitute(pattern: object, bindings: dict, template: object) -> object:
    """``pattern`` with its slots replaced by ``bindings``, calls rebuilt in the representation of ``template``."""
    if isinstance(pattern, Slot):
        if pattern.name not in bindings:
            raise ValueError(f"the right-hand side uses the slot ~{pattern.name}, which the left-hand side lacks")
        return bindings[pattern.name]
    if not iscall(pattern):
        return pattern
    args = [substitute(a, bindings, template) for a in arguments(pattern)]
    return maketerm(template, operation(pattern), args)


@dataclass(frozen=True)
class Rule:
    """``lhs => rhs``: a pattern and its replacement (a pattern, or a function of the slot bindings)."""

    lhs: object
    rhs: object

    def __call__(self, term: object) -> object | None:
        bindings = match(self.lhs, term)
        if bindings is None:
            return None
        if callable(self.rhs) and not isinstance(self.rhs, Expr):
            return self.rhs(**bindings)
        return substitute(self.rhs, bindings, term)


def _slot_names(pattern: object) -> set[str]:
    if isinstance(pattern, Slot):
        return {pattern.name}
    if is_number(pattern) or not iscall(pattern):
        return set()
    return set().union(*(_slot_names(a) for a in arguments(pattern)))


def rule(lhs: object, rhs: object) -> Rule:
    """The rewrite rule ``lhs => rhs``; ``lhs`` must be a call pattern, ``rhs`` a pattern or a callable."""
    if is_number(lhs) or not isinstance(lhs, Expr) or not iscall(lhs):
        raise ValueError(f"lhs must be a call pattern such as ~a * ~b, got {lhs!r}")
    if isinstance(rhs, Expr) or is_number(rhs):
        missing = _slot_names(rhs) - _slot_names(lhs)
        if missing:
            raise ValueError(f"rhs uses slots {sorted(missing)} that lhs does not bind")
    elif not callable(rhs):
        raise TypeError(f"rhs must be a pattern, a number or a callable, got {type(rhs).__name__}")
    return Rule(lhs, rhs)


def equivalence(lhs: object, rhs: object) -> list[Rule]:
    """``lhs == rhs``: the rule in both directions."""
    return [rule(lhs, rhs), rule(rhs, lhs)]


Rewriter = Callable[[object], object | None]


def chain(rewriters: Sequence[Rewriter]) -> Rewriter:
    """A rewriter that applies each rewriter in turn to the running result; None if none applied."""
    rewriters = list(rewriters)
    if not all(callable(r) for r in rewriters):
        raise TypeError("rewriters must be callables term -> term or None")

    def chained(term: object) -> object | None:
        changed, current = False, term
        for rewriter in rewriters:
            result = rewriter(current)
            if result is not None:
                changed, current = True, result
        return current if changed else None

    return chained


def _replace_changed(args: Sequence, new_args: Sequence) -> list:
    return [a if n is None else n for a, n in zip(args, new_args, strict=True)]


def postwalk(rewriter: Rewriter) -> Rewriter:
    """A rewriter that rewrites the arguments of every call first (bottom-up), then the call itself."""

    def walk(term: object) -> object | None:
        if not isinstance(term, Expr) or not iscall(term):
            return rewriter(term) if isinstance(term, Expr) else None
        args = arguments(term)
        new_args = [walk(a) for a in args]
        rebuilt = term
        if any(a is not None for a in new_args):
            rebuilt = maketerm(term, operation(term), _replace_changed(args, new_args))
        result = rewriter(rebuilt) if isinstance(rebuilt, Expr) else None
        if result is not None:
            return result
        return rebuilt if rebuilt is not term else None

    return walk


def prewalk(rewriter: Rewriter) -> Rewriter:
    """A rewriter that rewrites every call before its arguments (top-down)."""

    def walk(term: object) -> object | None:
        if not isinstance(term, Expr):
            return None
        result = rewriter(term)
        current = term if result is None else result
        if not isinstance(current, Expr) or not iscall(current):
            return result
        args = arguments(current)
        new_args = [walk(a) for a in args]
        if any(a is not None for a in new_args):
            return maketerm(current, operation(current), _replace_changed(args, new_args))
        return result

    return walk


def fixpoint(rewriter: Rewriter, max_iter: int = 100) -> Rewriter:
    """A rewriter that repeats ``rewriter`` until it no longer changes the term (at most ``max_iter`` times)."""
    if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 1:
        raise ValueError(f"max_iter must be an int >= 1, got {max_iter!r}")

    def repeated(term: object) -> object | None:
        changed, current = False, term
        for _ in range(max_iter):
            result = rewriter(current)
            if result is None:
                break
            changed, current = True, result
        return current if changed else None

    return repeated


def simplify_classic(expr: object, rules: Sequence[Rewriter], max_iter: int = 100) -> object:
    """Apply ``rules`` bottom-up over the whole expression until nothing changes (classical rewriting)."""
    result = fixpoint(postwalk(chain(rules)), max_iter)(expr)
    return expr if result is None else result


# ---------------------------------------------------------------- a classical "collect like terms" rule set


def sort_key(x: object) -> tuple:
    """A total order on terms: numbers first, then symbols by name, then calls by their printed form."""
    if is_number(x):
        return (0, x, "")
    if not iscall(x):
        return (1, 0, x.name)
    return (2, 0, to_string(x))


def _flatten(op: str) -> Rewriter:
    def flatten(term: object) -> object | None:
        if not iscall(term) or operation(term) != op:
            return None
        args = arguments(term)
        if not any(iscall(a) and operation(a) == op for a in args):
            return None
        flat = [b for a in args for b in (arguments(a) if iscall(a) and operation(a) == op else (a,))]
        return maketerm(term, op, flat)
    return flatten


def _split_coefficient(term: object) -> tuple[float, object]:
    if iscall(term) and operation(term) == "*" and is_number(arguments(term)[0]):
        rest = arguments(term)[1:]
        return arguments(term)[0], rest[0] if len(rest) == 1 else maketerm(term, "*", rest)
    return 1, term


def _split_exponent(term: object) -> tuple[object, float]:
    if iscall(term) and operation(term) == "^" and is_number(arguments(term)[1]):
        return arguments(term)[0], arguments(term)[1]
    return term, 1


def _collect(op: str) -> Rewriter:
    """Fold numbers, sort the arguments and merge adjacent like terms (sums) or like factors (products)."""
    unit, fold = (0, sum) if op == "+" else (1, math.prod)

    def collect(term: object) -> object | None:
        if not iscall(term) or operation(term) != op:
            return None
        args = arguments(term)
        numbers = [a for a in args if is_number(a)]
        split = [_split_coefficient(a)[::-1] if op == "+" else _split_exponent(a) for a in args if not is_number(a)]
        merged: list[list] = []
        for key, amount in sorted(split, key=lambda pair: sort_key(pair[0])):
            if merged and merged[-1][0] == key:
                merged[-1][1] += amount
            else:
                merged.append([key, amount])
        constant = fold(numbers) if numbers else unit
        if op == "*" and constant == 0:
            return 0
        pieces = [] if constant == unit else [constant]
        for key, amount in merged:
            if amount == 0:
                continue
            if op == "+":
                factors = arguments(key) if iscall(key) and operation(key) == "*" else (key,)
                pieces.append(key if amount == 1 else maketerm(term, "*", [amount, *factors]))
            else:
                pieces.append(key if amount == 1 else maketerm(term, "^", [key, amount]))
        if not pieces:
            return unit
        result = pieces[0] if len(pieces) == 1 else maketerm(term, op, pieces)
        return None if result == term else result

    return collect


def collect_like_terms_rules() -> list[Rewriter]:
    """Classical rules that bring a tree-form polynomial to the form the dictionary representation builds."""
    x, = slots("x")
    return [_flatten("+"), _flatten("*"), _collect("+"), _collect("*"), rule(x ** 1, x)]


# ---------------------------------------------------------------- tracing, common subexpressions, code generation


def trace(f: Callable[[list], Sequence], n_inputs: int, form: str = "dict") -> tuple[tuple, list]:
    """Run the numeric function ``f(list_of_inputs) -> sequence`` on symbols; return (inputs, output terms)."""
    if isinstance(n_inputs, bool) or not isinstance(n_inputs, int) or n_inputs < 1:
        raise ValueError(f"n_inputs must be an int >= 1, got {n_inputs!r}")
    if not callable(f):
        raise TypeError(f"f must be callable, got {type(f).__name__}")
    inputs = symbols(" ".join(f"x{i}" for i in range(n_inputs)), form)
    outputs = list(f(list(inputs)))
    for out in outputs:
        if not (is_number(out) or isinstance(out, Expr)):
            raise TypeError(f"f must return numbers or symbolic terms, got {type(out).__name__}")
    return inputs, outputs


def cse(exprs: Sequence) -> tuple[list[tuple[Temporary, Tree]], list]:
    """Common-subexpression elimination by hash-consing.

    Every distinct call becomes one assignment ``t_k = op(args)`` whose arguments are symbols, earlier temporaries
    or numbers; equal subterms (found by hashing) share one temporary. Returns (assignments, reduced outputs).
    """
    exprs = list(exprs)
    seen: dict = {}
    assignments: list[tuple[Temporary, Tree]] = []

    def reduce(x: object) -> object:
        if is_number(x):
            return x
        if not isinstance(x, Expr):
            raise TypeError(f"exprs must hold numbers or symbolic terms, got {type(x).__name__}")
        if not iscall(x):
            return x
        if x not in seen:
            node = Tree(operation(x), [reduce(a) for a in arguments(x)])
            if node not in seen:
                temp = Temporary(f"t{len(assignments)}")
                assignments.append((temp, node))
                seen[node] = temp
            seen[x] = seen[node]
        return seen[x]

    return assignments, [reduce(e) for e in exprs]


def _emit(x: object, names: dict) -> str:
    if is_number(x):
        return repr(x) if x >= 0 else f"({x!r})"
    if x not in names:
        raise ValueError(f"the expression uses the symbol {x!r}, which is not among args")
    return names[x]


def build_function(exprs: Sequence, args: Sequence[Expr]) -> Callable:
    """Compile ``exprs`` (terms over the symbols ``args``) into a Python function ``f(*values) -> tuple``.

    The source is straight-line code, one operation per line after common-subexpression elimination, and each
    temporary is deleted after its last use (so a batch call keeps few arrays alive). It is written only from
    our own term types (operations from a fixed list, numbers, generated variable names), so no user string is
    ever evaluated. The values may be numbers or numpy arrays (then one call evaluates a batch).
    """
    args = list(args)
    if not all(isinstance(a, Sym | TreeSym) for a in args):
        raise TypeError("args must be symbols (Sym or TreeSym)")
    if len(set(args)) != len(args):
        raise ValueError("args must be distinct symbols")
    assignments, outputs = cse(exprs)
    names = {a: f"a{i}" for i, a in enumerate(args)}
    last_use = {arg: k for k, (_, node) in enumerate(assignments) for arg in node.args if isinstance(arg, Temporary)}
    dead_after: dict[int, list[str]] = {}
    for temp, k in last_use.items():
        if temp not in outputs:
            dead_after.setdefault(k, []).append(temp)
    lines = [f"def generated({', '.join(names.values())}):"]
    for k, (temp, node) in enumerate(assignments):
        operands = [_emit(a, names) for a in node.args]
        op = node.op
        if op in ("+", "*"):
            code = f" {op} ".join(operands)
        elif op in ("^", "/") and len(operands) == 2:
            code = f"{operands[0]} {'**' if op == '^' else '/'} {operands[1]}"
        elif op == "-" and len(operands) in (1, 2):
            code = f"-{operands[0]}" if len(operands) == 1 else f"{operands[0]} - {operands[1]}"
        elif op in FUNCTIONS:
            code = f"_{op}({', '.join(operands)})"
        else:
            raise ValueError(f"cannot generate code for the operation {op!r}")
        names[temp] = f"t{k}"
        lines.append(f"    t{k} = {code}")
        if k in dead_after:
            lines.append(f"    del {', '.join(names[t] for t in dead_after[k])}")
    lines.append(f"    return ({''.join(_emit(o, names) + ', ' for o in outputs)})")
    source = "\n".join(lines)
    namespace: dict = {"__builtins__": {}, **{f"_{name}": fn for name, fn in FUNCTIONS.items()}}
    exec(compile(source, "<build_function>", "exec"), namespace)
    function = namespace["generated"]
    function.source = source
    return function


# ---------------------------------------------------------------- example models written as plain numeric code


def brusselator_rhs(state: Sequence, a: float = 1.0, b: float = 3.4, alpha: float = 0.02) -> list:
    """Right-hand side of the 1-D Brusselator on a periodic grid, written with scalar loops.

    ``state = [u_0..u_{N-1}, v_0..v_{N-1}]``; ``du_i = a + u_i^2 v_i - (b+1) u_i + alpha (u_{i-1} - 2u_i + u_{i+1})``,
    ``dv_i = b u_i - u_i^2 v_i + alpha (v_{i-1} - 2v_i + v_{i+1})``. Works on floats and on symbols alike.
    """
    if len(state) < 6 or len(state) % 2:
        raise ValueError(f"state must hold 2N values with N >= 3, got {len(state)}")
    n = len(state) // 2
    u, v = state[:n], state[n:]
    du, dv = [], []
    for i in range(n):
        left, right = (i - 1) % n, (i + 1) % n
        reaction = u[i] * u[i] * v[i]
        du.append(a + reaction - (b + 1) * u[i] + alpha * (u[left] - 2 * u[i] + u[right]))
        dv.append(b * u[i] - reaction + alpha * (v[left] - 2 * v[i] + v[right]))
    return du + dv


@dataclass(frozen=True)
class ReactionNetwork:
    """Mass-action network: reaction r consumes ``reactants[s, r]`` and makes ``products[s, r]`` of species s."""

    reactants: np.ndarray
    products: np.ndarray

    @property
    def stoichiometry(self) -> np.ndarray:
        return self.products - self.reactants


def random_reaction_network(n_species: int, n_reactions: int, rng: np.random.Generator) -> ReactionNetwork:
    """A random network: each reaction has 1-2 reactant species (order <= 2) and 1-2 product species."""
    for value, name in ((n_species, "n_species"), (n_reactions, "n_reactions")):
        if isinstance(value, bool) or not isinstance(value, int) or value < 2:
            raise ValueError(f"{name} must be an int >= 2, got {value!r}")
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
    reactants = np.zeros((n_species, n_reactions), dtype=int)
    products = np.zeros((n_species, n_reactions), dtype=int)
    for r in range(n_reactions):
        species = rng.choice(n_species, size=4, replace=False)
        if rng.random() < 0.5:
            reactants[species[0], r] = 2
        else:
            reactants[species[:2], r] = 1
        products[species[2:2 + rng.integers(1, 3)], r] = 1
    return ReactionNetwork(reactants, products)


def mass_action_rhs(network: ReactionNetwork, species: Sequence, rates: Sequence) -> list:
    """``du_s = sum_r nu[s, r] * k_r * prod_j u_j ^ reactants[j, r]``, written term by term as plain code."""
    nu = network.stoichiometry
    if len(species) != nu.shape[0] or len(rates) != nu.shape[1]:
        raise ValueError(f"need {nu.shape[0]} species and {nu.shape[1]} rates, got {len(species)} and {len(rates)}")
    rhs = []
    for s in range(nu.shape[0]):
        total = None
        for r in np.flatnonzero(nu[s]):
            flux = rates[r]
            for j in np.flatnonzero(network.reactants[:, r]):
                order = int(network.reactants[j, r])
                flux = flux * (species[j] if order == 1 else species[j] ** order)
            term = flux if nu[s, r] == 1 else int(nu[s, r]) * flux
            total = term if total is None else total + term
        rhs.append(0 if total is None else total)
    return rhs
