"""Lowering of gated MLPs with the activation in block layout (plain ONNX form)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from armor_export.config import ExportConfig
from armor_export.export import lowering
from armor_export.export.wrapper import DecoderSpec
from armor_export.prune.linear import ArmorLinear
from tests.conftest import random_armorize, tiny_model

FAMILIES = ["llama", "mistral", "qwen2", "qwen3", "gemma"]


def _lowered(model, monkeypatch, blocked: bool, plugin: bool = False):
    model = copy.deepcopy(model)
    with monkeypatch.context() as m:
        if not blocked:
            m.setattr(lowering, "blocked_mlp_eligible", lambda mlp: False)
        counts = lowering.lower_model_(model, [], plugin=plugin)
    return model, counts


@pytest.mark.parametrize("family", FAMILIES)
def test_blocked_mlp_matches_the_per_linear_lowering(family, monkeypatch):
    model = tiny_model(family).eval()
    random_armorize(model)
    layers = model.config.num_hidden_layers
    blocked, counts = _lowered(model, monkeypatch, blocked=True)
    plain, plain_counts = _lowered(model, monkeypatch, blocked=False)
    assert counts == {"armor": 7 * layers, "sparse": 0, "blocked_mlps": layers}
    assert plain_counts["blocked_mlps"] == 0
    x = torch.randn(2, 5, model.config.hidden_size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        for i in range(layers):
            mlp = blocked.model.layers[i].mlp
            assert isinstance(mlp, lowering.LoweredArmorMLP)
            want = model.model.layers[i].mlp(x)
            torch.testing.assert_close(mlp(x), plain.model.layers[i].mlp(x), rtol=1e-6, atol=1e-6)
            torch.testing.assert_close(mlp(x), want, rtol=1e-4, atol=1e-4)
    # the projections keep their names, so initializers are named as before
    names = {n for n, _ in blocked.named_buffers()}
    assert "model.layers.0.mlp.down_proj.sparse_core" in names


def test_blocked_mlp_handles_a_bias(monkeypatch):
    model = tiny_model("llama").eval()
    mlp = model.model.layers[0].mlp
    gen = torch.Generator().manual_seed(2)
    for name in ("gate_proj", "up_proj", "down_proj"):
        lin = getattr(mlp, name)
        d_out, d_in = lin.weight.shape
        a = torch.eye(16) + 0.1 * torch.randn(d_out // 16, 16, 16, generator=gen)
        b = torch.eye(16) + 0.1 * torch.randn(d_in // 16, 16, 16, generator=gen)
        mask = torch.rand(d_out, d_in, generator=gen).argsort(-1) % 2 == 0
        bias = torch.randn(d_out, generator=gen)
        setattr(mlp, name, ArmorLinear.from_factors(a, lin.weight.detach(), mask, b, bias))
    assert lowering.blocked_mlp_eligible(mlp)
    lowered = lowering.LoweredArmorMLP(mlp)
    x = torch.randn(3, model.config.hidden_size, generator=gen)
    with torch.no_grad():
        torch.testing.assert_close(lowered(x), mlp(x), rtol=1e-4, atol=1e-4)


def test_mlps_that_do_not_qualify_keep_the_per_linear_lowering(monkeypatch):
    model = tiny_model("llama").eval()
    random_armorize(model)
    # layer 0: down_proj with another block size than the activation's
    layer0 = model.model.layers[0].mlp
    down = layer0.down_proj
    eye = torch.eye(32)
    layer0.down_proj = ArmorLinear.from_factors(
        eye.expand(down.out_features // 32, 32, 32).clone(),
        down.core.detach(),
        down.mask,
        eye.expand(down.in_features // 32, 32, 32).clone(),
    )
    assert not lowering.blocked_mlp_eligible(layer0)

    # layer 1: a family whose MLP computes something else with the same children
    class OtherMLP(nn.Module):
        def __init__(self, mlp):
            super().__init__()
            self.gate_proj, self.up_proj, self.down_proj = mlp.gate_proj, mlp.up_proj, mlp.down_proj
            self.act_fn = mlp.act_fn

        def forward(self, x):
            return self.down_proj(self.act_fn(self.up_proj(x)) * self.gate_proj(x))

    model.model.layers[1].mlp = OtherMLP(model.model.layers[1].mlp)
    assert not lowering.blocked_mlp_eligible(model.model.layers[1].mlp)
    lowered, counts = _lowered(model, monkeypatch, blocked=True)
    assert counts == {"armor": 14, "sparse": 0, "blocked_mlps": 0}
    # a dense projection disqualifies too
    dense_mlp = tiny_model("llama").model.layers[0].mlp
    assert not lowering.blocked_mlp_eligible(dense_mlp)
    # the plugin form keeps natural layout for its plugin nodes
    plain = tiny_model("llama").eval()
    random_armorize(plain)
    _, counts = _lowered(plain, monkeypatch, blocked=True, plugin=True)
    assert counts["blocked_mlps"] == 0


def test_blocked_export_drops_transposes_and_gives_the_same_outputs(
    tokenizer, tmp_path, monkeypatch
):
    ort = pytest.importorskip("onnxruntime")
    onnx = pytest.importorskip("onnx")
    from armor_export.export import export_onnx
    from armor_export.export.wrapper import example_inputs

    model = tiny_model("llama").eval()
    random_armorize(model)
    results = {}
    for blocked in (True, False):
        with monkeypatch.context() as m:
            if not blocked:
                m.setattr(lowering, "blocked_mlp_eligible", lambda mlp: False)
            cfg = ExportConfig(model="llama", output_dir=str(tmp_path / str(blocked)))
            results[blocked] = export_onnx(cfg, model=copy.deepcopy(model), tokenizer=tokenizer)
    assert results[True].counts["blocked_mlps"] == model.config.num_hidden_layers

    def transposes(result):
        graph = onnx.load(str(result.onnx_path)).graph
        return sum(node.op_type == "Transpose" for node in graph.node)

    # per layer: the gate and up A outputs no longer go back to token layout
    assert transposes(results[True]) <= transposes(results[False]) - 2 * 2
    spec = DecoderSpec.from_config(model.config)
    feeds = dict(
        zip(
            spec.input_names(),
            [t.numpy() for t in example_inputs(spec, torch.float32, batch=2, seq=6, past=3)],
            strict=True,
        )
    )
    out = {k: ort.InferenceSession(str(r.onnx_path)).run(None, feeds) for k, r in results.items()}
    for got, want in zip(out[True], out[False], strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
