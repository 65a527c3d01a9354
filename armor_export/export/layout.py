"""Graph pass: one Transpose where the exported graph moves data twice.

The block-diagonal wrappers leave each output in block layout ``[n_blocks, tokens, b]`` and
bring it back to token layout with a Transpose; for ``q``/``k``/``v`` the attention code then
reshapes that to heads and transposes again, to ``[batch, heads, seq, head_dim]``. The chain
``Transpose → Reshape… → Transpose`` is one permutation of a finer view of the same data, so
it can be written as ``Reshape → Transpose → Reshape``: one copy instead of two, same values.

The pass works on any such chain whose shapes it can prove. Dimensions are products of an
integer and named symbols (``batch*seq``, ``576``) as the exporter writes them; the two shapes
around the Reshapes must have a common refinement (every boundary of one divides or is
divided by every later boundary of the other), else the chain is left alone. Reshape targets
that depend on two or more symbols are computed at run time from the graph inputs' shapes.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

MAX_RANK = 8  # TensorRT's limit on tensor rank
_SYMBOL = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass(frozen=True)
class Mono:
    """``coeff × Π symbols``: a dimension size as the exporter's shape inference states it."""

    coeff: int
    symbols: tuple[str, ...] = ()

    def __mul__(self, other: Mono) -> Mono:
        return Mono(self.coeff * other.coeff, tuple(sorted(self.symbols + other.symbols)))

    def divides(self, other: Mono) -> bool:
        if self.coeff == 0 or other.coeff % self.coeff:
            return False
        return not Counter(self.symbols) - Counter(other.symbols)

    def __truediv__(self, other: Mono) -> Mono:
        rest = Counter(self.symbols) - Counter(other.symbols)
        return Mono(self.coeff // other.coeff, tuple(sorted(rest.elements())))


ONE = Mono(1)


def parse_dim(dim) -> Mono | None:
    """An int, or a symbolic dim written as ``a*b*3``; anything else (sums, unknown) → None."""
    if isinstance(dim, int):
        return Mono(dim) if dim >= 0 else None
    text = getattr(dim, "value", None)
    if not isinstance(text, str):
        text = None if text is None else str(text)
    if not text:
        return None
    coeff, symbols = 1, []
    for part in (p.strip() for p in text.split("*")):
        if part.isdigit():
            coeff *= int(part)
        elif _SYMBOL.match(part):
            symbols.append(part)
        else:
            return None
    return Mono(coeff, tuple(sorted(symbols)))


def parse_shape(value: ir.Value) -> list[Mono] | None:
    if value.shape is None:
        return None
    dims = [parse_dim(d) for d in value.shape]
    return None if any(d is None for d in dims) else dims


def _prefixes(shape: list[Mono]) -> list[Mono]:
    out = [ONE]
    for dim in shape:
        out.append(out[-1] * dim)
    return out


def refine(first: list[Mono], second: list[Mono]) -> tuple[list[Mono], list, list] | None:
    """Atoms of the common refinement of two shapes of one tensor, and for each dim of
    either shape the range of atom indices it covers; None if there is none."""
    p1, p2 = _prefixes(first), _prefixes(second)
    if p1[-1] != p2[-1]:
        return None
    chain, i, j = [ONE], 1, 1
    while i < len(p1) or j < len(p2):
        a = p1[i] if i < len(p1) else None
        b = p2[j] if j < len(p2) else None
        if a is not None and (b is None or a == b or a.divides(b)):
            nxt, i = a, i + 1
            if a == b:
                j += 1
        elif b is not None and (a is None or b.divides(a)):
            nxt, j = b, j + 1
        else:
            return None
        if nxt != chain[-1]:
            if not chain[-1].divides(nxt):
                return None
            chain.append(nxt)
    where = {m: k for k, m in enumerate(chain)}
    atoms = [chain[k + 1] / chain[k] for k in range(len(chain) - 1)]

    def spans(prefix):
        return [range(where[prefix[k]], where[prefix[k + 1]]) for k in range(len(prefix) - 1)]

    return atoms, spans(p1), spans(p2)


@dataclass
class Plan:
    """``Reshape(x, in_dims) → Transpose(perm) → Reshape(out_dims)``."""

    in_dims: list[Mono]
    perm: list[int]
    out_dims: list[Mono]


def plan_chain(
    s0: list[Mono], p1: list[int], s1: list[Mono], s2: list[Mono], p2: list[int], s3: list[Mono]
) -> Plan | None:
    """Fold ``Transpose(p1)`` (s0 → s1), a reshape to s2 and ``Transpose(p2)`` (→ s3)."""
    if [s0[p] for p in p1] != s1 or [s2[p] for p in p2] != s3:
        return None
    refined = refine(s1, s2)
    if refined is None:
        return None
    atoms, spans1, spans2 = refined
    # atoms in the input's memory order: s0's dims in order, each split into its atoms
    of_s0 = {p1[k]: list(spans1[k]) for k in range(len(p1))}
    in_order = [a for j in range(len(s0)) for a in of_s0[j]]
    out_order = [a for i in range(len(s3)) for a in spans2[p2[i]]]
    perm = [in_order.index(a) for a in out_order]
    # coalesce runs of atoms that stay neighbours, so the Transpose has the lowest rank
    groups: list[list[int]] = []
    for pos in perm:
        if groups and groups[-1][-1] + 1 == pos:
            groups[-1].append(pos)
        else:
            groups.append([pos])
    by_start = sorted(groups, key=lambda g: g[0])
    in_dims = [_product(atoms[in_order[p]] for p in g) for g in by_start]
    reduced = [by_start.index(g) for g in groups]
    if len(in_dims) > MAX_RANK:
        return None
    return Plan(in_dims, reduced, s3)


def _product(monos) -> Mono:
    out = ONE
    for m in monos:
        out = out * m
    return out


def _fits_a_constant(dims: list[Mono]) -> bool:
    """At most one symbolic size: a constant shape with -1 for it will do."""
    return sum(bool(d.symbols) for d in dims) <= 1


class _Builder:
    """New initializers and run-time shape nodes, shared across the rewrites of one graph."""

    def __init__(self, graph: ir.Graph):
        self.graph = graph
        self.symbols: dict[str, tuple[ir.Value, int]] = {}
        for value in graph.inputs:
            for axis, dim in enumerate(value.shape or []):
                name = getattr(dim, "value", None)
                if isinstance(name, str) and _SYMBOL.match(name):
                    self.symbols.setdefault(name, (value, axis))
        self.constants: dict[tuple, ir.Value] = {}
        self.runtime: dict[Mono, ir.Value] = {}
        # shape nodes read only graph inputs: they go first, so every rewrite may share them
        self.anchor = next(iter(graph), None)

    def _add(self, node: ir.Node) -> ir.Value:
        self.graph.insert_before(self.anchor, node)
        return node.outputs[0]

    def constant(self, values: list[int]) -> ir.Value:
        key = tuple(values)
        if key not in self.constants:
            name = f"armor_layout_shape_{len(self.constants)}"
            value = ir.Value(
                name=name, const_value=ir.tensor(np.array(values, np.int64), name=name)
            )
            value.shape = ir.Shape([len(values)])
            value.type = ir.TensorType(ir.DataType.INT64)
            self.graph.register_initializer(value)
            self.constants[key] = value
        return self.constants[key]

    def can_build(self, dims: list[Mono]) -> bool:
        if _fits_a_constant(dims):
            return True
        return all(s in self.symbols for d in dims for s in d.symbols)

    def shape(self, dims: list[Mono]) -> tuple[ir.Value, int]:
        """A 1-D int64 shape for Reshape and the ``allowzero`` it needs."""
        if _fits_a_constant(dims):
            return self.constant([-1 if d.symbols else d.coeff for d in dims]), 0
        parts = [self._dim(d) for d in dims]
        # explicit sizes: allowzero, so a size 0 means 0 and not "copy the input's"
        return self._add(ir.node("Concat", parts, {"axis": 0})), 1

    def _dim(self, dim: Mono) -> ir.Value:
        if dim in self.runtime:
            return self.runtime[dim]
        value = self.constant([dim.coeff])
        for symbol in dim.symbols:
            source, axis = self.symbols[symbol]
            size = self._add(ir.node("Shape", [source], {"start": axis, "end": axis + 1}))
            value = self._add(ir.node("Mul", [value, size]))
        self.runtime[dim] = value
        return value


def _single_use(value: ir.Value) -> ir.Node | None:
    uses = list(value.uses())
    if len(uses) != 1 or value.is_graph_output():
        return None
    return uses[0][0] if uses[0][1] == 0 else None


def _chain_from(first: ir.Node) -> list[ir.Node] | None:
    """``[Transpose, Reshape, …, Transpose]`` starting at ``first``, or None."""
    nodes, node = [first], _single_use(first.outputs[0])
    while node is not None and node.op_type == "Reshape" and node.domain == "":
        nodes.append(node)
        node = _single_use(node.outputs[0])
    if node is None or node.op_type != "Transpose" or node.domain != "" or len(nodes) < 2:
        return None
    return [*nodes, node]


def _perm(node: ir.Node, rank: int) -> list[int]:
    attr = node.attributes.get("perm")
    return list(attr.as_ints()) if attr is not None else list(reversed(range(rank)))


def merge_transpose_chains(graph: ir.Graph) -> int:
    """Rewrite every provable ``Transpose → Reshape… → Transpose`` chain; returns the count."""
    builder = _Builder(graph)
    merged = 0
    for node in list(graph):
        # a node an earlier rewrite removed (the last Transpose of its chain) has no graph
        if node.op_type != "Transpose" or node.domain != "" or node.graph is not graph:
            continue
        chain = _chain_from(node)
        if chain is None:
            continue
        first, last = chain[0], chain[-1]
        x = first.inputs[0]
        shapes = [parse_shape(v) for v in (x, first.outputs[0], chain[-2].outputs[0])]
        s3 = parse_shape(last.outputs[0])
        if any(s is None for s in shapes) or s3 is None:
            continue
        s0, s1, s2 = shapes
        plan = plan_chain(s0, _perm(first, len(s0)), s1, s2, _perm(last, len(s2)), s3)
        if plan is None or not builder.can_build(plan.in_dims) or not builder.can_build(s3):
            continue
        new_nodes = _rewrite(builder, x, plan)
        out = new_nodes[-1].outputs[0]
        ir.convenience.replace_nodes_and_values(
            graph, last, chain, new_nodes, [last.outputs[0]], [out]
        )
        merged += 1
    return merged


def _rewrite(builder: _Builder, x: ir.Value, plan: Plan) -> list[ir.Node]:
    if plan.perm == list(range(len(plan.perm))):
        shape, zero = builder.shape(plan.out_dims)
        return [ir.node("Reshape", [x, shape], {"allowzero": zero})]
    shape_in, zero_in = builder.shape(plan.in_dims)
    split = ir.node("Reshape", [x, shape_in], {"allowzero": zero_in})
    move = ir.node("Transpose", [split.outputs[0]], {"perm": plan.perm})
    shape_out, zero_out = builder.shape(plan.out_dims)
    join = ir.node("Reshape", [move.outputs[0], shape_out], {"allowzero": zero_out})
    return [split, move, join]
