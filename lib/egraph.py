"""An e-graph: equality saturation over terms, then extraction of the cheapest equivalent expression.

An e-graph stores many equivalent expressions at once. An *e-node* is an operation applied to *e-classes*
(``(op, class_1, ..., class_k)``), or a leaf (a symbol or a number); an *e-class* is a set of e-nodes known to be
equal. Rewrite rules only ever *add* equalities, so the order in which they are applied does not matter;
``extract`` then picks, in every class, the e-node of least total cost. Terms enter and leave through the term
interface of ``lib.symbolic`` (``iscall``, ``operation``, ``arguments``), so any representation can be optimised.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from lib.symbolic import (
    Expr,
    Rule,
    Slot,
    Tree,
    arguments,
    cse,
    equivalence,
    is_number,
    iscall,
    operation,
    rule,
    slots,
)

LEAF = "$leaf"

OP_COSTS: dict[str, float] = {
    "+": 1, "-": 1, "abs": 2, "*": 3, "exp": 18, "/": 24, "^": 100,
    "log1p": 124, "sin": 134, "cos": 134, "atan": 135, "tan": 156,
}
"""Estimated CPU cycles per operation (the table of SymbolicUtils' e-graph cost function); unknown ops cost 1."""


def _compile(pattern: object) -> object:
    """A pattern as nested tuples: slots stay, leaves become ``(LEAF, value)``, calls ``(op, sub-patterns)``."""
    if isinstance(pattern, Slot):
        return pattern
    if is_number(pattern) or not iscall(pattern):
        return (LEAF, pattern)
    return (operation(pattern), tuple(_compile(a) for a in arguments(pattern)))


def node_cost(op: str, op_costs: dict[str, float] = OP_COSTS) -> float:
    """Cost of one e-node's own operation: leaves 0, listed operations their cost, anything else 1."""
    if op == LEAF:
        return 0
    return op_costs.get(op, 1)


def expression_cost(term: object, op_costs: dict[str, float] = OP_COSTS) -> float:
    """Cost of a term as written (no sharing): an n-ary call counts its operation n - 1 times (binary chain)."""
    if is_number(term) or not iscall(term):
        return 0
    args = arguments(term)
    repeats = max(len(args) - 1, 1) if operation(term) in ("+", "*") else 1
    return repeats * node_cost(operation(term), op_costs) + sum(expression_cost(a, op_costs) for a in args)


def shared_cost(terms: Sequence, op_costs: dict[str, float] = OP_COSTS) -> float:
    """Cost of the straight-line code for ``terms`` after common-subexpression elimination (each distinct
    subterm is computed once; an n-ary call counts its operation n - 1 times)."""
    assignments, _ = cse(terms)
    return sum(max(len(node.args) - 1, 1) * node_cost(node.op, op_costs) if node.op in ("+", "*")
               else node_cost(node.op, op_costs) for _, node in assignments)


@dataclass
class SaturationReport:
    """What ``EGraph.saturate`` did: sizes after each iteration, and why it stopped."""

    n_nodes: list[int] = field(default_factory=list)
    n_classes: list[int] = field(default_factory=list)
    stop_reason: str = "max_iter"


class EGraph:
    """E-graph with union-find, hash-consed e-nodes and congruence closure by ``rebuild``."""

    def __init__(self) -> None:
        self._parent: list[int] = []
        self._classes: dict[int, dict[tuple, None]] = {}
        self._hashcons: dict[tuple, int] = {}

    # ------------------------------------------------------------ union-find and e-nodes
    def find(self, class_id: int) -> int:
        """The canonical id of the e-class of ``class_id``."""
        if not isinstance(class_id, int) or not 0 <= class_id < len(self._parent):
            raise ValueError(f"class_id must be an e-class id in [0, {len(self._parent)}), got {class_id!r}")
        root = class_id
        while self._parent[root] != root:
            root = self._parent[root]
        while self._parent[class_id] != root:
            self._parent[class_id], class_id = root, self._parent[class_id]
        return root

    def _canonical(self, node: tuple) -> tuple:
        if node[0] == LEAF:
            return node
        return (node[0], *(self.find(c) for c in node[1:]))

    def add_node(self, node: tuple) -> int:
        """The e-class of ``node`` (made if new); ``node`` is ``(op, class ids...)`` or ``(LEAF, value)``."""
        node = self._canonical(node)
        existing = self._hashcons.get(node)
        if existing is not None:
            return self.find(existing)
        class_id = len(self._parent)
        self._parent.append(class_id)
        self._classes[class_id] = {node: None}
        self._hashcons[node] = class_id
        return class_id

    def add(self, term: object) -> int:
        """Add a term (any representation, through the term interface); n-ary + and * become binary chains."""
        if is_number(term) or (isinstance(term, Expr) and not iscall(term)):
            return self.add_node((LEAF, term))
        if not isinstance(term, Expr):
            raise TypeError(f"term must be a number or a symbolic expression, got {type(term).__name__}")
        op, children = operation(term), [self.add(a) for a in arguments(term)]
        if op in ("+", "*") and len(children) > 2:
            chained = children[0]
            for child in children[1:]:
                chained = self.add_node((op, chained, child))
            return chained
        return self.add_node((op, *children))

    def merge(self, a: int, b: int) -> int:
        """Declare the e-classes of ``a`` and ``b`` equal; call ``rebuild`` before reading the graph."""
        root_a, root_b = self.find(a), self.find(b)
        if root_a == root_b:
            return root_a
        if len(self._classes[root_a]) < len(self._classes[root_b]):
            root_a, root_b = root_b, root_a
        self._parent[root_b] = root_a
        self._classes[root_a].update(self._classes.pop(root_b))
        return root_a

    def rebuild(self) -> None:
        """Restore the invariants: canonical e-nodes, one e-class per distinct e-node (congruence closure)."""
        merged = True
        while merged:
            merged = False
            seen: dict[tuple, int] = {}
            for class_id in list(self._classes):
                for node in list(self._classes.get(class_id, ())):
                    canonical = self._canonical(node)
                    other = seen.get(canonical)
                    if other is not None and self.find(other) != self.find(class_id):
                        self.merge(other, class_id)
                        merged = True
                    seen[canonical] = self.find(class_id)
            self._classes = {c: dict.fromkeys(self._canonical(n) for n in nodes) for c, nodes in self._classes.items()}
        self._hashcons = {node: c for c, nodes in self._classes.items() for node in nodes}

    @property
    def n_nodes(self) -> int:
        return sum(len(nodes) for nodes in self._classes.values())

    @property
    def n_classes(self) -> int:
        return len(self._classes)

    def classes(self) -> dict[int, frozenset]:
        """A snapshot ``{class id: its e-nodes}``."""
        return {c: frozenset(nodes) for c, nodes in self._classes.items()}

    # ------------------------------------------------------------ e-matching and saturation
    def _match(self, pattern: object, class_id: int, bindings: dict) -> Iterator[dict]:
        if type(pattern) is Slot:
            bound = bindings.get(pattern.name)
            if bound is None:
                yield {**bindings, pattern.name: class_id}
            elif bound == class_id:
                yield bindings
            return
        if pattern[0] == LEAF:
            if pattern in self._classes[class_id]:
                yield bindings
            return
        op, sub_patterns = pattern
        arity = len(sub_patterns) + 1
        for node in self._classes[class_id]:
            if node[0] == op and len(node) == arity:
                yield from self._match_children(sub_patterns, node, 0, bindings)

    def _match_children(self, sub_patterns: tuple, node: tuple, i: int, bindings: dict) -> Iterator[dict]:
        if i == len(sub_patterns):
            yield bindings
            return
        for extended in self._match(sub_patterns[i], node[i + 1], bindings):
            yield from self._match_children(sub_patterns, node, i + 1, extended)

    def ematch(self, pattern: object, class_id: int) -> list[dict]:
        """All bindings (slot name -> e-class id) under which ``pattern`` is a member of the e-class ``class_id``."""
        self.rebuild()
        return list(self._match(_compile(pattern), self.find(class_id), {}))

    def _instantiate(self, pattern: object, bindings: dict) -> int:
        if type(pattern) is Slot:
            return bindings[pattern.name]
        if pattern[0] == LEAF:
            return self.add_node(pattern)
        op, sub_patterns = pattern
        return self.add_node((op, *(self._instantiate(p, bindings) for p in sub_patterns)))

    def saturate(self, rules: Sequence[Rule], max_iter: int = 8, node_limit: int = 5000,
                 match_limit: int = 1000) -> SaturationReport:
        """Equality saturation: each iteration matches every rule everywhere, then adds all the equalities.

        A rule contributes at most ``match_limit`` matches per iteration (a simple guard, like egg's scheduler).
        Stops when an iteration adds nothing (saturated), after ``max_iter`` iterations, or once the graph holds
        more than ``node_limit`` e-nodes.
        """
        for value, name, minimum in ((max_iter, "max_iter", 0), (node_limit, "node_limit", 1),
                                     (match_limit, "match_limit", 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
        rules = list(rules)
        if not all(isinstance(r, Rule) and (isinstance(r.rhs, Expr) or is_number(r.rhs)) for r in rules):
            raise TypeError("rules must be Rule objects whose right-hand side is a pattern (not a function)")
        compiled = [(_compile(r.lhs), _compile(r.rhs)) for r in rules]
        report = SaturationReport()
        self.rebuild()
        for _ in range(max_iter):
            if self.n_nodes > node_limit:
                report.stop_reason = "node_limit"
                break
            matches = []
            for lhs, rhs in compiled:
                matches.extend((rhs, c_b) for c_b in itertools.islice(
                    ((b, c) for c in list(self._classes) for b in self._match(lhs, c, {})), match_limit))
            before = (self.n_nodes, self.n_classes)
            for rhs, (bindings, class_id) in matches:
                self.merge(class_id, self._instantiate(rhs, bindings))
                if len(self._hashcons) > node_limit:
                    break
            self.rebuild()
            report.n_nodes.append(self.n_nodes)
            report.n_classes.append(self.n_classes)
            if (self.n_nodes, self.n_classes) == before:
                report.stop_reason = "saturated"
                break
        return report

    # ------------------------------------------------------------ extraction
    @staticmethod
    def _node_total(node: tuple, best: dict, op_costs: dict[str, float]) -> float | None:
        """Cost of ``node`` given its children's best costs (None while a child has no cost yet)."""
        if node[0] == LEAF:
            return 0.0
        total = node_cost(node[0], op_costs)
        for child in node[1:]:
            entry = best.get(child)
            if entry is None:
                return None
            total += entry[0]
        return total

    def _cheapest_nodes(self, op_costs: dict[str, float]) -> dict[int, tuple[float, tuple]]:
        """Least cost and cheapest e-node of every class, iterated to a fixed point (the graph must be rebuilt,
        so that every child id is canonical)."""
        best: dict[int, tuple[float, tuple]] = {}
        changed = True
        while changed:
            changed = False
            for cid, nodes in self._classes.items():
                for node in nodes:
                    cost = self._node_total(node, best, op_costs)
                    if cost is not None and (cid not in best or cost < best[cid][0]):
                        best[cid] = (cost, node)
                        changed = True
        return best

    def extract_many(self, class_ids: Sequence[int], op_costs: dict[str, float] = OP_COSTS) -> list[tuple]:
        """``(cost, cheapest term)`` of each e-class in ``class_ids``; a node costs its operation plus its children."""
        self.rebuild()
        best = self._cheapest_nodes(op_costs)

        def build(cid: int) -> object:
            node = best[self.find(cid)][1]
            return node[1] if node[0] == LEAF else Tree(node[0], [build(c) for c in node[1:]])

        return [(best[self.find(c)][0], build(c)) for c in class_ids]

    def extract(self, class_id: int, op_costs: dict[str, float] = OP_COSTS) -> tuple[float, object]:
        """The cheapest term in the e-class ``class_id`` and its cost."""
        return self.extract_many([class_id], op_costs)[0]


def optimize(terms: Sequence, rules: Sequence[Rule], max_iter: int = 8, node_limit: int = 5000,
             op_costs: dict[str, float] = OP_COSTS) -> tuple[list, SaturationReport]:
    """Saturate one e-graph holding all ``terms`` and extract the cheapest form of each."""
    graph = EGraph()
    roots = [graph.add(t) for t in terms]
    report = graph.saturate(rules, max_iter=max_iter, node_limit=node_limit)
    return [term for _, term in graph.extract_many(roots, op_costs)], report


def cpu_cost_rules() -> list[Rule]:
    """Equalities that trade operations for cheaper ones (after SymbolicUtils' ``opt_theory``), as e-graph rules.

    a+b == b+a, a*b == b*a, (a+b)+c == a+(b+c), (a*b)*c == a*(b*c), a*x + a*y == a*(x+y), -1*a == -a,
    a + (-1*b) == a - b, x^-1 == 1/x, (1/x)*a == a/x, x^2 == x*x, sin(x)/cos(x) == tan(x),
    sin(x)^2 + cos(x)^2 => 1, sin(2a) == 2 sin(a) cos(a).
    """
    a, b, c, x, y = slots("a b c x y")
    sin_x, cos_x = Tree("sin", (x,)), Tree("cos", (x,))
    return [
        rule(a + b, b + a),
        rule(a * b, b * a),
        *equivalence((a + b) + c, a + (b + c)),
        *equivalence((a * b) * c, a * (b * c)),
        *equivalence(a * x + a * y, a * (x + y)),
        *equivalence(-1 * a, -a),
        *equivalence(a + (-1 * b), a - b),
        *equivalence(x ** -1, 1 / x),
        *equivalence((1 / x) * a, a / x),
        *equivalence(x ** 2, x * x),
        *equivalence(sin_x / cos_x, Tree("tan", (x,))),
        rule(sin_x ** 2 + cos_x ** 2, 1),
        *equivalence(Tree("sin", (2 * a,)), 2 * Tree("sin", (a,)) * Tree("cos", (a,))),
    ]
