"""tools/bench_onnx_blockdiag.py: every form computes the block-diagonal product, and the
lower bounds add up what they say they add up."""

import importlib
import types
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def bench(monkeypatch):
    pytest.importorskip("onnxruntime")
    monkeypatch.syspath_prepend(str(ROOT / "tools"))
    return importlib.import_module("bench_onnx_blockdiag")


def test_every_form_computes_the_block_diagonal_product(bench):
    rng = np.random.default_rng(1)
    tokens, width, b = 6, 12, 4
    x = rng.standard_normal((tokens, width), dtype=np.float32)
    blocks = rng.standard_normal((width // b, b, b)).astype(np.float32)
    dense = np.zeros((width, width))
    for q in range(width // b):
        dense[q * b : (q + 1) * b, q * b : (q + 1) * b] = blocks[q]
    for form in bench.FORMS:
        out = bench.Timed(bench.build(form, tokens, blocks), x, 1).output()
        expected = bench.reference(x, blocks, form)
        np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5, err_msg=form)
        if form in bench.TOKEN_LAYOUT:  # the same numbers as the dense block-diagonal matrix
            np.testing.assert_allclose(out, x @ dense, rtol=1e-5, atol=1e-5, err_msg=form)


@pytest.mark.parametrize("variant", ["core", "core, transposed input", "core, weight on the left"])
def test_core_variants_compute_the_core(bench, variant):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((5, 8), dtype=np.float32)
    weight = rng.standard_normal((8, 3)).astype(np.float32)
    feed = x if variant == bench.CORE else np.ascontiguousarray(x.T)
    out = bench.Timed(bench.build_core(weight, variant), feed, 1).output()
    out = out.T if variant == bench.CORE_LEFT else out
    np.testing.assert_allclose(out, x @ weight, rtol=1e-5, atol=1e-5)


def test_layer_bounds_take_the_cheapest_form_of_each_product(bench):
    args = types.SimpleNamespace(cores="8x4", block_sizes="4")
    ms = {  # (form, width) -> ms
        ("batched", 8): 5.0,
        ("split", 8): 4.0,
        (bench.BLOCK_OUT, 8): 1.0,
        (bench.FEATURE_OUT, 8): 2.0,
        ("batched", 4): 3.0,
        (bench.BLOCK_OUT, 4): 0.5,
        (bench.FEATURE_OUT, 4): 0.7,
    }
    rows = [
        {"form": f, "width": w, "block_size": 4, "ms": t, "token_layout": f in bench.TOKEN_LAYOUT}
        for (f, w), t in ms.items()
    ]
    seconds = {
        ("2-D MatMul", 8, 0): 0.016,
        ("2-D MatMul", 4, 0): 0.004,
        (bench.CORE, 8, 4): 0.010,
        (bench.CORE_FM, 8, 4): 0.0135,  # +3.5 ms for a transposed input
        (bench.CORE_LEFT, 8, 4): 0.0125,  # +2.5 ms with the weight on the left
    }
    bound = bench.layer_bounds(args, seconds, rows)[4]
    assert bound["any_layout_ms"] == pytest.approx(1.0 + 0.5)
    # B: min(token layout 4.0, feature-major 2.0 + 2.5) = 4.0; A: cheapest 0.5
    assert bound["core_input_ms"] == pytest.approx(4.0 + 0.5)
    assert bound["ideal_ms"] == pytest.approx(4 / 8 * 16 + 4 / 4 * 4)
    seconds[(bench.CORE_LEFT, 8, 4)] = 0.0105  # now feature-major + 0.5 ms beats 4.0
    assert bench.layer_bounds(args, seconds, rows)[4]["core_input_ms"] == pytest.approx(3.0)
