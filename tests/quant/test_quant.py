"""Quantizing pruned checkpoints to 8 bits (quant/): schemes, losses, storage, resume."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from armor_export.errors import QuantScaleError, UserError
from armor_export.io import read_json, sha256_file
from armor_export.prune.checkpoint import MANIFEST, WEIGHTS, load_checkpoint
from armor_export.prune.linear import ArmorLinear, QuantLinear
from armor_export.quant import api, schemes
from armor_export.quant.core import QuantCore, fake_quant, saturation
from tests.conftest import prune_tiny, rehash_checkpoint

SCHEMES = ("int8", "fp8")


@pytest.fixture(scope="module")
def pruned(tmp_path_factory):
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("quant")
    return {m: prune_tiny(root, m) for m in ("armor", "sparsegpt")}


@pytest.fixture(scope="module")
def quantized(pruned, tmp_path_factory):
    """(method, scheme) -> an 8-bit checkpoint (ARMOR re-fitted)."""
    root = tmp_path_factory.mktemp("q")
    return {
        (m, s): api.quantize_checkpoint(pruned[m], root / f"{m}-{s}", api.QuantSettings(s))
        for m in pruned
        for s in SCHEMES
    }


def _cores(model):
    return {n: m for n, m in model.named_modules() if isinstance(m, (ArmorLinear, QuantLinear))}


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("method", ["armor", "sparsegpt"])
def test_zeros_stay_zero_and_masks_are_the_pruned_ones(pruned, quantized, method, scheme):
    model, manifest = load_checkpoint(quantized[method, scheme])
    float_model, _ = load_checkpoint(pruned[method])
    assert manifest["quant"]["scheme"] == scheme
    cores = _cores(model)
    assert len(cores) == len(manifest["matrices"]) > 0
    for name, mod in cores.items():
        q = mod.quant
        assert isinstance(q, QuantCore) and q.values.dtype == schemes.get(scheme).torch_dtype
        ref = float_model.get_submodule(name)
        float_mask = ref.mask if isinstance(ref, ArmorLinear) else ref.weight != 0
        nonzero = q.values.float() != 0
        assert not bool(nonzero[~float_mask].any()), f"{name}: a pruned zero became non-zero"
        groups = nonzero.reshape(nonzero.shape[0], -1, 4).sum(-1)
        assert int(groups.max()) <= 2  # still 2:4 along the input (K) dimension


@pytest.mark.parametrize("scheme", SCHEMES)
def test_refit_never_raises_a_loss_and_every_loss_is_recorded(quantized, scheme):
    manifest = read_json(quantized["armor", scheme] / MANIFEST)
    for name, entry in manifest["matrices"].items():
        q = entry["quant"]
        assert q["loss_refit"] <= q["loss_quantized"], name
        assert q["loss_pruned"] == pytest.approx(entry["proxy_loss"], rel=1e-3, abs=1e-6)
    base = read_json(quantized["sparsegpt", scheme] / MANIFEST)
    assert all("loss_refit" not in e["quant"] for e in base["matrices"].values())


@pytest.mark.parametrize("scheme", SCHEMES)
def test_scales_and_values_round_trip_through_the_checkpoint(quantized, scheme, tmp_path):
    from safetensors import safe_open

    path = quantized["armor", scheme]
    model, _ = load_checkpoint(path)
    with safe_open(str(path / WEIGHTS), "pt") as f:
        for name, mod in _cores(model).items():
            stored = f.get_tensor(f"{name}.weight_scale")
            assert stored.dtype == torch.float32
            assert torch.equal(mod.quant.weight_scale, stored)
            if mod.quant.weight_only:  # its input stays in float: no activation scale
                assert f"{name}.act_scale" not in f.keys()
                assert scheme == "int8" and name.endswith("down_proj")  # the int8 default
            else:
                assert torch.equal(mod.quant.act_scale, f.get_tensor(f"{name}.act_scale"))
            values = f.get_tensor(f"{name}.core_values")  # compact: the kept half only
            assert values.dtype == schemes.get(scheme).torch_dtype
            assert values.shape == (mod.out_features, mod.in_features // 2)
    # loading gives the same model every time; float16 keeps the 8-bit values as they are
    again, _ = load_checkpoint(path, torch.float16)
    for name, mod in _cores(again).items():
        ref = model.get_submodule(name).quant
        assert torch.equal(mod.quant.q_bits, ref.q_bits)
        assert mod.quant.weight_scale.dtype == torch.float16


@pytest.mark.parametrize("bad", [float("nan"), 0.0, float("inf"), -1.0])
@pytest.mark.fault(
    "quantize",
    "a quantized checkpoint whose stored scale is NaN, zero, infinite or negative",
    "one line naming the checkpoint and the scale; nothing is loaded",
)
def test_bad_scale_is_refused_in_one_line(quantized, tmp_path, bad):
    import shutil

    from safetensors.torch import load_file, save_file

    ckpt = tmp_path / "ckpt"
    shutil.copytree(quantized["armor", "int8"], ckpt)
    tensors = load_file(ckpt / WEIGHTS)
    key = next(k for k in tensors if k.endswith(".weight_scale"))
    tensors[key][3] = bad
    save_file(tensors, ckpt / WEIGHTS, metadata={"format": "armor-export-checkpoint"})
    rehash_checkpoint(ckpt)
    with pytest.raises(QuantScaleError) as err:
        load_checkpoint(ckpt)
    message = str(err.value)
    assert "\n" not in message and str(ckpt) in message and key in message


def test_quant_core_refuses_bad_scales():
    values = torch.zeros(4, 8, dtype=torch.int8)
    for bad in (float("nan"), 0.0, float("inf")):
        with pytest.raises(QuantScaleError):
            QuantCore("int8", values, torch.tensor([1.0, 1.0, bad, 1.0]), torch.tensor(1.0))
        with pytest.raises(QuantScaleError):
            QuantCore("int8", values, torch.ones(4), torch.tensor(bad))


@pytest.mark.fault(
    "quantize",
    "activations beyond the format's range (FP8's ±448 times the scale) at run time",
    "counted per core (quant.core.saturation) for the reports, and saturated as the graph does",
)
def test_activations_beyond_range_are_counted_not_silently_clipped():
    core = torch.zeros(2, 8)
    core[:, ::2] = 1.0
    qc = QuantCore.from_float(core, torch.tensor(0.01), "fp8")  # range ±4.48
    model = torch.nn.Sequential(qc)
    x = torch.tensor([[1.0, -2.0, 3.0, 4.0, 5.0, -6.0, 0.5, 100.0]])
    y = model(x)
    assert saturation(model) == {"0": (3, 8)}
    assert torch.equal(y, fake_quant(x, torch.tensor(0.01), schemes.get("fp8")) @ core.t())
    assert float(y.abs().max()) <= 4 * 4.48 + 1e-3  # saturated, not NaN


def test_round_and_saturate_follow_onnx():
    x = torch.tensor([0.5, 1.5, 2.5, -0.5, 200.0, -300.0])
    int8 = schemes.get("int8").to_storage(x)
    assert int8.tolist() == [0, 2, 2, 0, 127, -128]  # half to even, saturated
    fp8 = schemes.get("fp8").to_storage(torch.tensor([1000.0, -1e9, 0.0]))
    assert fp8.float().tolist() == [448.0, -448.0, 0.0]  # saturated, never NaN


def test_quantized_model_stays_close_to_the_float_one(pruned, quantized):
    """The 8-bit model is a small perturbation of the float one (catches a wrong scale
    axis or a transposed core, which would give garbage)."""
    float_model, _ = load_checkpoint(pruned["armor"])
    ids = torch.arange(3, 35).reshape(2, 16) % 90
    with torch.no_grad():
        ref = float_model(ids).logits
        for scheme in SCHEMES:
            out = load_checkpoint(quantized["armor", scheme])[0](ids).logits
            rel = float((out - ref).norm() / ref.norm())
            assert rel < 0.1, (scheme, rel)


def test_smoothing_keeps_the_product_and_moves_outliers_into_the_core(pruned, tmp_path):
    out = api.quantize_checkpoint(
        pruned["armor"], tmp_path / "s", api.QuantSettings("int8", smoothing=0.5)
    )
    manifest = read_json(out / MANIFEST)
    for entry in manifest["matrices"].values():
        q = entry["quant"]
        # the smoothed factors are the same product: the float loss does not move
        assert q["loss_smoothed"] == pytest.approx(q["loss_pruned"], rel=1e-4, abs=1e-7)
        assert q["loss_refit"] <= q["loss_quantized"]


def test_already_quantized_and_unknown_scheme_are_one_line(quantized, tmp_path):
    with pytest.raises(UserError, match="already quantized"):
        api.quantize_checkpoint(quantized["armor", "int8"], tmp_path / "x", api.QuantSettings())
    with pytest.raises(UserError, match="unknown quantization scheme"):
        api.QuantSettings("int3").validate()


def test_resume_redoes_no_finished_matrix(pruned, tmp_path, monkeypatch):
    """A run stopped after some matrices (writes are atomic, so a kill -9 leaves the same)
    resumes with the others only, and ends with the bytes of an uninterrupted run."""
    whole = api.quantize_checkpoint(pruned["armor"], tmp_path / "whole", api.QuantSettings())
    real, calls = api.quantize_matrix, []

    def stop_after_three(name, *args):
        if len(calls) == 3:
            raise KeyboardInterrupt
        calls.append(name)
        return real(name, *args)

    monkeypatch.setattr(api, "quantize_matrix", stop_after_three)
    with pytest.raises(KeyboardInterrupt):
        api.quantize_checkpoint(pruned["armor"], tmp_path / "part", api.QuantSettings())
    done = list(calls)
    calls.clear()
    monkeypatch.setattr(
        api, "quantize_matrix", lambda name, *a: calls.append(name) or real(name, *a)
    )
    api.quantize_checkpoint(pruned["armor"], tmp_path / "part", api.QuantSettings())
    total = read_json(whole / MANIFEST)["matrices"]
    assert set(calls).isdisjoint(done) and len(calls) + len(done) == len(total)
    assert sha256_file(tmp_path / "part" / WEIGHTS) == sha256_file(whole / WEIGHTS)


@pytest.mark.fault(
    "quantize",
    "SIGKILL to `armor-export quantize` once its first matrices are stored",
    "the rerun keeps what was stored and ends with the bytes of an uninterrupted run",
)
def test_kill_9_then_rerun_gives_the_uninterrupted_result(pruned, quantized, tmp_path):
    out = tmp_path / "q"
    args = [sys.executable, "-m", "armor_export", "quantize", "-q", str(pruned["armor"]),
            "-o", str(out), "--scheme", "int8"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    work = out / api.WORK
    while proc.poll() is None and time.monotonic() < deadline:
        if work.is_dir() and any(not p.name.startswith("_") for p in work.glob("*.safetensors")):
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.01)
    assert proc.wait(timeout=60) == -signal.SIGKILL, proc.stderr.read().decode()
    proc.stderr.close()
    stored = {p.name: p.stat().st_mtime_ns for p in work.glob("*.safetensors")}
    rerun = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert stored  # the kill came after the first matrix was stored
    for name, mtime in stored.items():  # nothing finished was done again
        assert (work / name).stat().st_mtime_ns == mtime, name
    whole = quantized["armor", "int8"]
    assert sha256_file(out / WEIGHTS) == sha256_file(whole / WEIGHTS)


@pytest.mark.fault(
    "quantize",
    "an 8-bit checkpoint evaluated on text whose activations exceed its calibrated range",
    "eval's result and line give how many core inputs were saturated, and where most were",
)
def test_eval_reports_saturated_activations(quantized, text_file):
    from transformers import AutoTokenizer

    from armor_export.config import EvalConfig
    from armor_export.eval.api import evaluate

    path = quantized["armor", "fp8"]
    model, _ = load_checkpoint(path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    cfg = EvalConfig(str(text_file), 2, 16, 2)
    clean = evaluate(str(path), cfg, model=model, tokenizer=tokenizer)
    assert clean.quant["scheme"] == "fp8" and clean.quant["seen"] > 0
    name, core = next((n, m.quant) for n, m in _cores(model).items())
    core.act_scale.mul_(1e-3)  # a range far below the text's activations
    hit = evaluate(str(path), cfg, model=model, tokenizer=tokenizer)
    assert hit.quant["saturated"] > clean.quant["saturated"]
    assert hit.quant["worst_core"] == f"{name}.quant"
    assert "saturated (most in" in hit.summary() and "\n" not in hit.summary()


def test_float_activation_cores_are_weight_only_everywhere(pruned, tmp_path):
    """``float_activations`` globs keep those cores' inputs in float (W8A16): the manifest
    names them, their QuantCore does not touch its input, and an empty list quantizes all."""
    every = api.quantize_checkpoint(
        pruned["armor"], tmp_path / "all", api.QuantSettings("int8", float_activations=())
    )
    some = api.quantize_checkpoint(
        pruned["armor"],
        tmp_path / "some",
        api.QuantSettings("int8", float_activations=("*.o_proj",)),
    )
    assert read_json(every / MANIFEST)["quant"]["weight_only"] == []
    named = read_json(some / MANIFEST)["quant"]["weight_only"]
    assert named and all(n.endswith("o_proj") for n in named)
    model, _ = load_checkpoint(some)
    x = torch.randn(3, 64) * 50
    for name, mod in _cores(model).items():
        assert mod.quant.weight_only == (name in named)
        if mod.quant.weight_only:
            y = mod.quant(x[:, : mod.in_features])
            assert torch.equal(y, x[:, : mod.in_features] @ mod.quant.weight(x.dtype).t())
            assert mod.quant.seen == 0  # nothing to saturate
    # the per-matrix work is keyed alike: which inputs stay in float decides only the scales
    from armor_export.io import read_metadata

    keys = {
        read_metadata(p)["key"] for d in (every, some) for p in (d / api.WORK).glob("*.safetensors")
    }
    assert len(keys) == 1
