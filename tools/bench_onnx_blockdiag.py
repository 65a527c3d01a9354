#!/usr/bin/env python
"""How fast can ONNX Runtime (CPU, fp32) run one block-diagonal product, in any standard form?

An ARMOR wrapper is ``y[t, q·b:(q+1)·b] = x[t, q·b:(q+1)·b] @ W[q]`` for every block q. This
times every standard-ONNX way of writing it that we know, on SmolLM2-135M's widths at a
512-token prefill, each checked against NumPy first:

- ``batched``: Reshape → Transpose → batched MatMul ``[nb, b, b]`` → Transpose → Reshape
  (the plain export's form; ORT folds the first Transpose into its FusedMatMul);
- ``batched, block out``: the same with the result left in block layout ``[nb, T, b]``
  (no way back to token layout: what a consumer that takes block layout pays);
- ``batched, feature-major out``: ``W_qᵀ @ x_qᵀ``, the result feature-major ``[d, T]``;
- ``split``: Split into column slices, one 2-D MatMul per block, Concat;
- ``einsum``: ``Einsum('tqi,qij->tqj')``;
- ``per-token``: MatMul of ``[T, nb, 1, b]`` by ``[nb, b, b]`` (one GEMV per token and block);
- ``dense weight``: a 2-D MatMul with the block-diagonal matrix stored densely ``[d, d]``;
- ``grouped conv``: Transpose to feature-major, grouped 1×1 Conv, Transpose back.

Each is set against its FLOP share of a 2-D MatMul (``b / d`` of the same run's ``[T, d] @
[d, d]``): the time the wrappers would take if they ran at the dense MatMuls' rate, which is
what the ONNX benchmark's target (prefill <= dense × (1 + FLOP overhead + 0.05)) assumes.

It also times each core of ``--cores`` with a token-layout input and with a feature-major
one (transposed on the way in, or with the weight on the left), and sums one decoder
layer's wrapper products, each in its cheapest form: a lower bound on what the wrappers add
to a prefill, since the ARMOR graph holds every operation of the dense one plus the
wrappers. With ``--dense-export`` (default: bench_onnx.py's dense export, when present) it
times the dense prefill in the same run and sets the bound, as a fraction of it, against the
target's allowance for the wrappers (FLOP overhead + 0.05): whether any graph of these forms
could meet the target on the machine at hand.

Writes docs/benchmarks/onnx_blockdiag.md and onnx_blockdiag.json.

    python tools/bench_onnx_blockdiag.py
"""

from __future__ import annotations

import argparse
import logging
import random
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from benchlib import (
    ExportRunner,
    dense_flops,
    dense_shapes,
    meta_lines,
    ort_run_meta,
    prompt_ids,
    write_report,
)

log = logging.getLogger("bench_onnx_blockdiag")
OPSET = 18
# forms whose output is in token layout [T, d], as the 2-D core MatMul and the residual need
TOKEN_LAYOUT = ("batched", "einsum", "per-token", "dense weight", "grouped conv", "split")
BLOCK_OUT, FEATURE_OUT = "batched, block out", "batched, feature-major out"
FORMS = (
    "batched",
    BLOCK_OUT,
    FEATURE_OUT,
    "split",
    "einsum",
    "per-token",
    "dense weight",
    "grouped conv",
)
CALL = ("empty call", 1, 0)  # a session that does nothing: subtracted from every time
CORE = "core"
# the ways a core can read a feature-major [K, T] input: transposed on the way in, or as
# the right operand of Wᵀ [N, K] (weight on the left; the result is feature-major too)
CORE_FM, CORE_LEFT = "core, transposed input", "core, weight on the left"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tokens", type=int, default=512, help="prefill tokens")
    p.add_argument("--block-sizes", default="32,64")
    p.add_argument(
        "--cores",
        default="576x576,576x192,576x192,576x576,576x1536,576x1536,1536x576",
        help="one decoder layer's cores K x N (SmolLM2: q, k, v, o, gate, up, down); each "
        "linear's B product is K wide and its A product N wide",
    )
    p.add_argument("--rounds", type=int, default=15, help="interleaved rounds (median)")
    p.add_argument("--repeats", type=int, default=10, help="runs per form and round (best kept)")
    p.add_argument("--threads", type=int, default=0, help="ORT intra-op threads (0: all)")
    p.add_argument(
        "--dense-export",
        default="runs/bench_onnx/dense",
        help="dense SmolLM2 export for the whole-model bound ('' to skip)",
    )
    p.add_argument("--out", default="docs/benchmarks")
    return p.parse_args(argv)


def _model(nodes, inits, out_shape, name):
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        nodes,
        name,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, None)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)],
        [numpy_helper.from_array(np.ascontiguousarray(v), k) for k, v in inits.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 9
    return model


def core_shapes(args) -> list[tuple[int, int]]:
    return [tuple(map(int, shape.split("x"))) for shape in args.cores.split(",")]


def widths(args) -> list[int]:
    return sorted({w for shape in core_shapes(args) for w in shape})


def build_core(weight: np.ndarray, variant: str):
    """A core ``[T, K] @ [K, N]`` (``CORE``), or one that reads its input feature-major
    ``[K, T]``: transposed on the way in (``CORE_FM``; ORT folds it into a FusedMatMul with
    transA), or as ``Wᵀ @ xᵀ`` (``CORE_LEFT``, result ``[N, T]``)."""
    if variant == CORE_LEFT:
        nodes = [_node("MatMul", ["w", "x"], ["y"])]
        return _model(nodes, {"w": np.ascontiguousarray(weight.T)}, None, variant)
    nodes = [_node("MatMul", ["xt" if variant == CORE_FM else "x", "w"], ["y"])]
    if variant == CORE_FM:
        nodes.insert(0, _node("Transpose", ["x"], ["xt"], perm=[1, 0]))
    return _model(nodes, {"w": weight}, None, variant)


def _ints(*dims) -> np.ndarray:
    return np.array(dims, np.int64)


def _node(op: str, inputs: list[str], outputs: list[str], **attrs):
    from onnx import helper

    return helper.make_node(op, inputs, outputs, **attrs)


# Each form: (tokens, blocks [nb, b, b]) -> (nodes, initializers, output shape), from input
# "x" [T, d] to output "y"; block q maps x[:, q] to y[:, q] as x_q @ blocks[q].


def _batched(tokens, blocks, block_out=False):
    nb, b, _ = blocks.shape
    inits = {"w": blocks, "to_blocks": _ints(tokens, nb, b)}
    nodes = [
        _node("Reshape", ["x", "to_blocks"], ["xb"]),
        _node("Transpose", ["xb"], ["xt"], perm=[1, 0, 2]),
        _node("MatMul", ["xt", "w"], ["y" if block_out else "yt"]),
    ]
    if block_out:
        return nodes, inits, [nb, tokens, b]
    inits["to_tokens"] = _ints(tokens, nb * b)
    nodes += [
        _node("Transpose", ["yt"], ["yb"], perm=[1, 0, 2]),
        _node("Reshape", ["yb", "to_tokens"], ["y"]),
    ]
    return nodes, inits, [tokens, nb * b]


def _feature_out(tokens, blocks):
    """y_qᵀ = W_qᵀ x_qᵀ: the result ``[nb, b, T]``, i.e. yᵀ ``[d, T]``."""
    nb, b, _ = blocks.shape
    inits = {
        "w": np.ascontiguousarray(blocks.transpose(0, 2, 1)),
        "to_blocks": _ints(tokens, nb, b),
    }
    nodes = [
        _node("Reshape", ["x", "to_blocks"], ["xb"]),
        _node("Transpose", ["xb"], ["xt"], perm=[1, 2, 0]),
        _node("MatMul", ["w", "xt"], ["y"]),
    ]
    return nodes, inits, [nb, b, tokens]


def _split(tokens, blocks):
    """One 2-D MatMul per block on column slices, concatenated back."""
    nb, b, _ = blocks.shape
    inits = {f"w{q}": blocks[q] for q in range(nb)}
    inits["sizes"] = np.full(nb, b, np.int64)
    nodes = [_node("Split", ["x", "sizes"], [f"x{q}" for q in range(nb)], axis=1)]
    nodes += [_node("MatMul", [f"x{q}", f"w{q}"], [f"y{q}"]) for q in range(nb)]
    nodes.append(_node("Concat", [f"y{q}" for q in range(nb)], ["y"], axis=1))
    return nodes, inits, [tokens, nb * b]


def _reshaped(tokens, blocks, op: str, block_shape: tuple, **attrs):
    """Reshape to ``block_shape``, one ``op`` with the blocks, Reshape back to tokens."""
    nb, b, _ = blocks.shape
    inits = {"w": blocks, "to_blocks": _ints(*block_shape), "to_tokens": _ints(tokens, nb * b)}
    nodes = [
        _node("Reshape", ["x", "to_blocks"], ["xb"]),
        _node(op, ["xb", "w"], ["yb"], **attrs),
        _node("Reshape", ["yb", "to_tokens"], ["y"]),
    ]
    return nodes, inits, [tokens, nb * b]


def _einsum(tokens, blocks):
    nb, b, _ = blocks.shape
    return _reshaped(tokens, blocks, "Einsum", (tokens, nb, b), equation="tqi,qij->tqj")


def _per_token(tokens, blocks):
    nb, b, _ = blocks.shape
    return _reshaped(tokens, blocks, "MatMul", (tokens, nb, 1, b))


def _dense_weight(tokens, blocks):
    nb, b, _ = blocks.shape
    dense = np.zeros((nb * b, nb * b), np.float32)
    for q in range(nb):
        dense[q * b : (q + 1) * b, q * b : (q + 1) * b] = blocks[q]
    return [_node("MatMul", ["x", "w"], ["y"])], {"w": dense}, [tokens, nb * b]


def _grouped_conv(tokens, blocks):
    """Feature-major ``[1, d, T, 1]``; Conv weight ``[out, in/group, 1, 1]``, out = q·b + j."""
    nb, b, _ = blocks.shape
    width = nb * b
    inits = {
        "w": blocks.transpose(0, 2, 1).reshape(width, b, 1, 1),
        "to_image": _ints(1, width, tokens, 1),
        "to_rows": _ints(width, tokens),
    }
    nodes = [
        _node("Transpose", ["x"], ["xt"], perm=[1, 0]),
        _node("Reshape", ["xt", "to_image"], ["xi"]),
        _node("Conv", ["xi", "w"], ["yi"], group=nb, kernel_shape=[1, 1]),
        _node("Reshape", ["yi", "to_rows"], ["yt"]),
        _node("Transpose", ["yt"], ["y"], perm=[1, 0]),
    ]
    return nodes, inits, [tokens, width]


BUILDERS = {
    "batched": _batched,
    BLOCK_OUT: lambda tokens, blocks: _batched(tokens, blocks, block_out=True),
    FEATURE_OUT: _feature_out,
    "split": _split,
    "einsum": _einsum,
    "per-token": _per_token,
    "dense weight": _dense_weight,
    "grouped conv": _grouped_conv,
}


def build(form: str, tokens: int, blocks: np.ndarray):
    """The ONNX model of ``form`` for ``y = x @ blockdiag(blocks)``."""
    return _model(*BUILDERS[form](tokens, blocks), form)


def build_reference(tokens: int, weight: np.ndarray):
    """The rate reference: a 2-D MatMul ``[T, d] @ [d, d]``."""
    return _model([_node("MatMul", ["x", "w"], ["y"])], {"w": weight}, [tokens, len(weight)], "2-D")


def build_empty():
    """No work: what a session.run call itself costs."""
    return _model([_node("Identity", ["x"], ["y"])], {}, [1], "empty")


def reference(x: np.ndarray, blocks: np.ndarray, form: str) -> np.ndarray:
    """What ``form`` must output, from the export's NumPy oracle (which takes each block as
    ``y_q = x_q @ W_qᵀ``), in fp64 and in the form's output layout."""
    from armor_export.export.reference import blockdiag_matmul

    y = blockdiag_matmul(x.astype(np.float64), blocks.transpose(0, 2, 1))  # [T, d]
    nb, b, _ = blocks.shape
    yb = y.reshape(x.shape[0], nb, b).transpose(1, 0, 2)  # [nb, T, b]
    if form == BLOCK_OUT:
        return yb
    if form == FEATURE_OUT:
        return yb.transpose(0, 2, 1)
    return y


class Timed:
    """One ORT session of a form, with its input; ``run()`` returns seconds."""

    def __init__(self, model, feed: np.ndarray, threads: int):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(
            model.SerializeToString(), options, providers=["CPUExecutionProvider"]
        )
        self.feed = {"x": feed}

    def output(self) -> np.ndarray:
        return self.session.run(None, self.feed)[0]

    def run(self) -> float:
        start = time.perf_counter()
        self.session.run(None, self.feed)
        return time.perf_counter() - start


def sessions(args) -> dict[tuple, Timed]:
    """Every (form, width, b) and the 2-D references, checked against NumPy."""
    rng = np.random.default_rng(0)
    out = {CALL: Timed(build_empty(), np.zeros(1, np.float32), args.threads)}
    for k, n in sorted(set(core_shapes(args))):
        x = rng.standard_normal((args.tokens, k), dtype=np.float32)
        weight = (rng.standard_normal((k, n)) / np.sqrt(k)).astype(np.float32)
        expected = x.astype(np.float64) @ weight
        for variant in (CORE, CORE_FM, CORE_LEFT):
            feed = x if variant == CORE else np.ascontiguousarray(x.T)
            timed = Timed(build_core(weight, variant), feed, args.threads)
            result = timed.output().T if variant == CORE_LEFT else timed.output()
            if not np.abs(result - expected).max() < 1e-3:
                sys.exit(f"{variant} {k}x{n} is wrong")
            out[(variant, k, n)] = timed
    for width in widths(args):
        x = rng.standard_normal((args.tokens, width), dtype=np.float32)
        square = (rng.standard_normal((width, width)) / np.sqrt(width)).astype(np.float32)
        out[("2-D MatMul", width, 0)] = Timed(build_reference(args.tokens, square), x, args.threads)
        for b in map(int, args.block_sizes.split(",")):
            if width % b:
                continue
            blocks = (rng.standard_normal((width // b, b, b)) / np.sqrt(b)).astype(np.float32)
            for form in FORMS:
                timed = Timed(build(form, args.tokens, blocks), x, args.threads)
                error = np.abs(timed.output() - reference(x, blocks, form)).max()
                if not error < 1e-3:
                    sys.exit(f"{form} (d={width}, b={b}) is wrong: max error {error:.2e}")
                out[(form, width, b)] = timed
    return out


def dense_prefill(folder: Path, tokens: int, threads: int):
    """A prefill timer of the dense export (seconds, on the runtime), or None without one."""
    from armor_export.export.api import MANIFEST

    if not (folder / MANIFEST).is_file():
        return None
    runner = ExportRunner(folder, threads)
    ids = prompt_ids(runner.generator.tokenizer, tokens)
    return lambda: runner.prefill(ids)


def measure(timers: dict, rounds: int, repeats: int) -> dict:
    """Median over rounds of each timer's best of ``repeats`` back-to-back runs, after one
    discarded run. Rounds visit the timers in a fresh shuffled order, so slow phases of the
    machine fall on all alike; runs of one timer stay together because an ORT session's
    threads spin for a while after its last run and would slow the next session down."""
    rng = random.Random(0)
    order = list(timers)
    samples = {key: [] for key in order}
    for _ in range(rounds):
        rng.shuffle(order)
        for key in order:
            timers[key]()
            samples[key].append(min(timers[key]() for _ in range(repeats)))
    return {key: statistics.median(v) for key, v in samples.items()}


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = parse_args(argv)
    timed = sessions(args)
    timers = {key: t.run for key, t in timed.items()}
    dense = None
    if args.dense_export:
        dense = dense_prefill(Path(args.dense_export), args.tokens, args.threads)
        if dense is None:
            log.info("%s: no dense export; the whole-model bound is left out", args.dense_export)
        else:
            timers["dense prefill"] = dense
    log.info("timing %d sessions, %d rounds", len(timers), args.rounds)
    seconds = measure(timers, args.rounds, args.repeats)
    call = seconds[CALL]
    net = {key: t - call for key, t in seconds.items() if isinstance(key, tuple)}
    rows = []
    for form, width, b in timed:
        if form not in FORMS:  # the references and the cores
            continue
        ideal = b / width * net[("2-D MatMul", width, 0)]
        t = net[(form, width, b)]
        rows.append(
            {
                "form": form,
                "width": width,
                "block_size": b,
                "ms": 1000 * t,
                "ideal_ms": 1000 * ideal,
                "of_ideal": t / ideal,
                "token_layout": form in TOKEN_LAYOUT,
            }
        )
    bounds = layer_bounds(args, net, rows)
    if dense is not None:
        against_dense(bounds, Path(args.dense_export), args, 1000 * seconds["dense prefill"])
    meta = {
        **ort_run_meta("bench_onnx_blockdiag.py", argv),
        "threads": args.threads or "ORT default (all cores)",
        "tokens": args.tokens,
        "rounds": args.rounds,
        "repeats": args.repeats,
        "matmul_2d_ms": {k[1]: 1000 * t for k, t in net.items() if k[0] == "2-D MatMul"},
        "empty_call_ms": 1000 * call,
        "cores": [
            {
                "k": k,
                "n": n,
                "token_ms": 1000 * net[(CORE, k, n)],
                "transposed_ms": 1000 * net[(CORE_FM, k, n)],
                "weight_left_ms": 1000 * net[(CORE_LEFT, k, n)],
            }
            for k, n in sorted(set(core_shapes(args)))
        ],
    }
    write_outputs(Path(args.out), meta, rows, bounds)
    return 0


def layer_bounds(args, seconds: dict, rows: list[dict]) -> dict:
    """Per block size, one layer's wrapper products (B and A of each core) summed two ways (ms):

    - ``any_layout``: each product in its cheapest form, its result in any layout, so with
      no transposes at all and no other cost: the most generous bound;
    - ``core_input``: each linear's ``B`` product in the cheapest way to hand its core an
      input it can read: a token-layout result, or a feature-major one plus what the cheaper
      feature-major way of reading it costs the core against a token-layout input (measured
      per core shape); each ``A`` product as above.
    """
    bounds = {}
    for b in map(int, args.block_sizes.split(",")):
        cheapest, token, feature = {}, {}, {}
        for r in rows:
            if r["block_size"] != b:
                continue
            width = r["width"]
            cheapest[width] = min(cheapest.get(width, float("inf")), r["ms"])
            if r["token_layout"]:
                token[width] = min(token.get(width, float("inf")), r["ms"])
            if r["form"] == FEATURE_OUT:
                feature[width] = r["ms"]
        cores = core_shapes(args)
        if any(k not in token or n not in cheapest for k, n in cores):
            continue
        core_input = 0.0
        for k, n in cores:
            # what reading a feature-major input costs the core (may be < 0)
            penalty = 1000 * (
                min(seconds[(CORE_FM, k, n)], seconds[(CORE_LEFT, k, n)]) - seconds[(CORE, k, n)]
            )
            core_input += min(token[k], feature[k] + penalty) + cheapest[n]
        products = [w for shape in cores for w in shape]
        bounds[b] = {
            "ideal_ms": sum(b / w * 1000 * seconds[("2-D MatMul", w, 0)] for w in products),
            "any_layout_ms": sum(cheapest[w] for w in products),
            "core_input_ms": core_input,
            "products": len(products),
        }
    return bounds


def against_dense(bounds: dict, folder: Path, args, dense_ms: float) -> None:
    """Add to each bound the fractions of the dense prefill and the target's allowance for
    the wrappers (FLOP overhead + 0.05, the overhead computed as bench_onnx.py does)."""
    from armor_export.export_manifest import ExportManifest

    source = ExportManifest.read(folder).source.model
    shapes = dense_shapes(source)
    products = [w for shape in core_shapes(args) for w in shape]
    for b, bound in bounds.items():
        wrapper_flops = args.tokens * shapes["layers"] * sum(2 * b * w for w in products)
        overhead = wrapper_flops / dense_flops(shapes, args.tokens, args.tokens)
        bound.update(dense_prefill_ms=dense_ms, flop_overhead=overhead, allowance=overhead + 0.05)
        for key in ("any_layout", "core_input"):
            bound[f"{key}_of_dense"] = shapes["layers"] * bound[f"{key}_ms"] / dense_ms


def _fraction(bound: dict, key: str) -> str:
    """``0.123`` of dense, marked where it exceeds the target's allowance on its own."""
    value = bound.get(f"{key}_of_dense")
    if value is None:
        return "-"
    return f"{value:.3f}" + (" (over)" if value > bound["allowance"] else "")


def _bound_lines(bounds: dict) -> list[str]:
    dense_ms = next(iter(bounds.values())).get("dense_prefill_ms")
    lines = [
        f"One decoder layer's {next(iter(bounds.values()))['products']} wrapper products (B "
        "and A of each core), each in its cheapest measured form: ms per layer, and × layers "
        "/ dense prefill" + (f" ({dense_ms:.1f} ms in the same run)" if dense_ms else "") + ":",
        "",
        "| b | ideal | any layout, no transposes | × ideal | of dense | cores get a readable "
        "input | of dense | allowance (FLOP overhead + 0.05) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for b, r in bounds.items():
        allowance = (
            f"{r['allowance']:.3f} ({r['flop_overhead']:.3f} + 0.05)" if "allowance" in r else "-"
        )
        lines.append(
            f"| {b} | {r['ideal_ms']:.2f} | {r['any_layout_ms']:.2f} | "
            f"{r['any_layout_ms'] / r['ideal_ms']:.2f} | {_fraction(r, 'any_layout')} | "
            f"{r['core_input_ms']:.2f} | {_fraction(r, 'core_input')} | {allowance} |"
        )
    return lines + [
        "",
        "Both sums are lower bounds on what the wrappers add to a prefill: the ARMOR graph holds "
        "every operation of the dense one plus the wrappers. *Any layout* lets every product "
        "leave its result in whatever layout is cheapest, so it counts no transposes, reshapes "
        "or other per-node costs at all. *Cores get a readable input* holds each B product to "
        "what the plain form's 2-D core MatMul `[T, K] @ [K, N]` can read: a token-layout "
        "result, or a feature-major one plus what the cheaper feature-major way of reading it "
        "costs the core (the table above), whichever is cheaper. The allowance is what the ONNX "
        "benchmark's target "
        "(prefill <= dense × (1 + FLOP overhead + 0.05), onnx.md) leaves the wrappers; a bound "
        "marked *over* exceeds it on its own, so no graph of these forms can meet the target "
        "on this machine.",
        "",
    ]


def _core_lines(cores: list[dict]) -> list[str]:
    lines = [
        "The cores `[T, K] @ [K, N]` (ms): with a token-layout input, and with a feature-major "
        "`[K, T]` input, either transposed on the way in or as `Wᵀ @ xᵀ` (the weight on the "
        "left):",
        "",
        "| K × N | token-layout input | transposed input | weight on the left |",
        "|---|---|---|---|",
    ]
    for c in cores:
        lines.append(
            f"| {c['k']} × {c['n']} | {c['token_ms']:.3f} | {c['transposed_ms']:.3f} | "
            f"{c['weight_left_ms']:.3f} |"
        )
    return lines + [""]


def write_outputs(out: Path, meta: dict, rows: list[dict], bounds: dict) -> None:
    lines = [
        "# One block-diagonal product on ONNX Runtime (CPU, fp32), every standard form",
        "",
        *meta_lines(meta),
        f"- machine: {meta['machine']}; onnxruntime {meta['onnxruntime']}, threads: "
        f"{meta['threads']}",
        f"- `y = x @ blockdiag(W)` for x `[{meta['tokens']}, d]`; best of {meta['repeats']} "
        f"runs per form and round, median of {meta['rounds']} interleaved rounds; every form "
        "checked against NumPy first",
        "- ideal: the product's FLOP share of the same run's 2-D MatMul `[T, d] @ [d, d]` "
        "(`b / d` of its time): what the wrappers cost if they ran at the dense MatMuls' rate",
        f"- every time is net of a session.run call that does nothing ({meta['empty_call_ms']:.3f}"
        " ms in this run)",
        "",
        "| d | b | form | token layout out | ms | ideal ms | × ideal |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in sorted(rows, key=lambda r: (r["block_size"], r["width"], r["ms"])):
        lines.append(
            f"| {r['width']} | {r['block_size']} | {r['form']} | "
            f"{'yes' if r['token_layout'] else 'no'} | {r['ms']:.3f} | {r['ideal_ms']:.3f} | "
            f"{r['of_ideal']:.2f} |"
        )
    lines += [
        "",
        "2-D MatMul `[T, d] @ [d, d]` (the rate reference): "
        + ", ".join(f"d={w} {ms:.3f} ms" for w, ms in meta["matmul_2d_ms"].items())
        + ".",
        "",
    ]
    lines += _core_lines(meta["cores"])
    if bounds:
        lines += _bound_lines(bounds)
    data = {"meta": meta, "forms": rows, "layer": bounds}
    write_report(out, "onnx_blockdiag", data, "\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
