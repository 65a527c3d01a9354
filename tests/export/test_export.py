"""ONNX export: graph form, 2:4 orientation, KV-cache parity with PyTorch, bad input."""

from __future__ import annotations

import copy
import json
import logging
import shutil

import numpy as np
import pytest
import torch

from tests.conftest import export_tiny, prune_tiny, random_armorize, tiny_model

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from armor_export.config import ExportConfig, ExportLimits  # noqa: E402
from armor_export.errors import ConfigError, CorruptFileError, GraphCheckError  # noqa: E402
from armor_export.export import checks, export_onnx, reference  # noqa: E402
from armor_export.export.wrapper import DecoderSpec, DecoderWithCache  # noqa: E402

N_LINEARS = 14  # 2 layers x 7


def torch_and_ort(model, onnx_path, batch=2, seq=5, past=3, pad=1, seed=0):
    """Run the same left-padded step through PyTorch and ORT; valid-position outputs."""
    spec = DecoderSpec.from_config(model.config)
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, spec.vocab_size, (batch, seq), generator=gen)
    mask = torch.ones(batch, past + seq, dtype=torch.long)
    mask[1, :pad] = 0
    pos = (mask.cumsum(-1) - 1).clamp(min=0)[:, -seq:]
    shape = (batch, spec.num_kv_heads, past, spec.head_dim)
    kv = [torch.randn(shape, generator=gen) for _ in range(2 * spec.num_layers)]
    with torch.no_grad():
        ref = [t.numpy() for t in DecoderWithCache(model.eval())(ids, mask, pos, *kv)]
    feeds = dict(zip(spec.input_names(), [t.numpy() for t in (ids, mask, pos, *kv)], strict=True))
    got = ort.InferenceSession(str(onnx_path)).run(None, feeds)
    valid = mask.numpy().astype(bool)
    return ref, got, valid


def max_err(ref, got, valid):
    errs = [np.abs(ref[0] - got[0])[valid[:, -ref[0].shape[1] :]].max()]
    for r, g in zip(ref[1:], got[1:], strict=True):
        errs.append(
            np.abs(r - g)[valid[:, None, :, None].repeat(r.shape[1], 1).repeat(r.shape[3], 3)].max()
        )
    return max(errs)


def test_plain_export_graph_form(tiny_export):
    manifest = tiny_export.manifest
    assert manifest["counts"]["armor"] == N_LINEARS
    assert manifest["counts"]["cores"] == N_LINEARS
    assert manifest["counts"]["plugin_nodes"] == 0
    model = onnx.load(str(tiny_export.onnx_path))
    dims = {
        v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
        for v in [*model.graph.input, *model.graph.output]
    }
    assert dims["input_ids"] == ["batch", "seq"]
    assert dims["attention_mask"] == ["batch", "total_seq"]
    assert dims["past_key_values.0.key"] == ["batch", 2, "past_seq", 16]
    assert dims["present.1.value"] == ["batch", 2, "total_seq", 16]
    assert dims["logits"] == ["batch", "seq", 300]
    inits = {i.name: i for i in model.graph.initializer}
    cores = [n for n in inits if n.endswith("sparse_core")]
    assert len(cores) == N_LINEARS
    for name in cores:  # [K, N] = [d_in, d_out], 2:4 along K
        weight = onnx.numpy_helper.to_array(inits[name])
        assert checks.two_four_violations(weight, axis=0) == 0
        assert (weight != 0).mean() == pytest.approx(0.5, abs=0.01)
    blocks = [n for n in inits if n.endswith(("a_weight", "b_weight"))]
    assert len(blocks) == 2 * N_LINEARS
    assert all(len(inits[n].dims) == 3 for n in blocks)  # [n_blocks, b, b] batched MatMul


def test_prefill_and_decode_match_pytorch(tiny_checkpoint, tiny_export):
    from armor_export.eval.api import load_any_model

    model, _, _ = load_any_model(str(tiny_checkpoint))
    for past in (0, 4):  # prefill with an empty cache, then a step with a cache
        ref, got, valid = torch_and_ort(
            model, tiny_export.onnx_path, seq=5 if past == 0 else 1, past=past
        )
        assert max_err(ref, got, valid) < 1e-4
        assert got[1].shape[2] == past + ref[0].shape[1]  # present = past + new


def test_plugin_export_has_plugin_nodes_and_reference_matches(tiny_plugin_export, tiny_export):
    from onnx.reference import ReferenceEvaluator

    model = onnx.load(str(tiny_plugin_export.onnx_path))
    nodes = [n for n in model.graph.node if n.op_type == reference.PLUGIN_NAME]
    assert len(nodes) == 2 * N_LINEARS
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in nodes[0].attribute}
    assert attrs["plugin_version"] == reference.PLUGIN_VERSION.encode()
    assert attrs["plugin_namespace"] == reference.PLUGIN_NAMESPACE.encode()
    assert nodes[0].domain == reference.PLUGIN_DOMAIN
    assert tiny_plugin_export.manifest["plugin"]["name"] == reference.PLUGIN_NAME
    # the 2:4 cores stay native MatMuls in the plugin form
    assert tiny_plugin_export.manifest["counts"]["cores"] == N_LINEARS
    spec = tiny_export.manifest["decoder"]
    gen = np.random.default_rng(0)
    feeds = {
        "input_ids": gen.integers(0, 300, (1, 6)),
        "attention_mask": np.ones((1, 6), np.int64),
        "position_ids": np.arange(6)[None],
    }
    for name in tiny_export.manifest["input_names"][3:]:
        feeds[name] = np.zeros((1, spec["num_kv_heads"], 0, spec["head_dim"]), np.float32)
    evaluator = ReferenceEvaluator(
        str(tiny_plugin_export.onnx_path), new_ops=reference.onnx_reference_ops()
    )
    plugin_logits = evaluator.run(["logits"], feeds)[0]
    plain_logits = ort.InferenceSession(str(tiny_export.onnx_path)).run(["logits"], feeds)[0]
    np.testing.assert_allclose(plugin_logits, plain_logits, atol=1e-5)


def test_numpy_reference_is_the_armor_linear():
    from armor_export.prune.linear import ArmorLinear
    from armor_export.prune.masks import mask_from_scores

    torch.manual_seed(0)
    core = torch.randn(32, 48, dtype=torch.float64)
    lin = ArmorLinear.from_factors(
        torch.randn(2, 16, 16, dtype=torch.float64),
        core,
        mask_from_scores(core.abs()),
        torch.randn(3, 16, 16, dtype=torch.float64),
        torch.randn(32, dtype=torch.float64),
    )
    x = torch.randn(2, 5, 48, dtype=torch.float64)
    y = reference.armor_linear(
        x.numpy(),
        lin.a_blocks.detach().numpy(),
        (lin.core * lin.mask).detach().numpy(),
        lin.b_blocks.detach().numpy(),
        lin.bias.detach().numpy(),
    )
    np.testing.assert_allclose(y, lin(x).detach().numpy(), rtol=1e-10, atol=1e-10)
    with pytest.raises(ValueError, match="n_blocks"):
        reference.blockdiag_matmul(np.zeros((2, 40)), np.zeros((3, 16, 16)))


@pytest.mark.parametrize("family", ["llama", "mistral", "qwen2", "qwen3", "gemma"])
def test_every_family_exports_with_kv_cache(family, tokenizer, tmp_path):
    model = tiny_model(family)
    n = random_armorize(model)
    result = export_onnx(
        ExportConfig(model=family, output_dir=str(tmp_path)), model=model, tokenizer=tokenizer
    )
    assert result.counts["armor"] == n
    assert result.manifest["family"] == family
    ref, got, valid = torch_and_ort(model, result.onnx_path, seq=1, past=4)
    assert max_err(ref, got, valid) < 1e-4


def test_attention_is_traced_eager_and_matches_the_sdpa_model(tokenizer, tmp_path):
    """The export traces HF's plain attention (no IsNaN/Where guard over the scores): same
    outputs as the model users load (SDPA), and finite everywhere, padded rows included."""
    model = tiny_model("llama")
    random_armorize(model)
    assert model.config._attn_implementation == "sdpa"
    result = export_onnx(
        ExportConfig(model="llama", output_dir=str(tmp_path)),
        model=copy.deepcopy(model),
        tokenizer=tokenizer,
    )
    assert result.manifest["attention"] == "eager"
    ops = {n.op_type for n in onnx.load(str(result.onnx_path)).graph.node}
    assert "IsNaN" not in ops and "Softmax" in ops
    for seq, past in [(5, 3), (1, 4), (6, 0)]:
        ref, got, valid = torch_and_ort(model, result.onnx_path, seq=seq, past=past, pad=2)
        assert max_err(ref, got, valid) < 1e-5
        assert all(np.isfinite(g).all() for g in got)


def test_dense_model_exports_as_dense_and_says_so(tiny_model_dir, tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        result = export_tiny(tiny_model_dir, tmp_path / "dense")
    assert "exporting it as dense" in caplog.text
    assert result.counts == {"armor": 0, "sparse": 0, "blocked_mlps": 0, "merged_transposes": 0}
    assert result.manifest["source"]["pruned"] is False


def test_baseline_checkpoint_exports_its_2_4_linears(tmp_path):
    ckpt = prune_tiny(tmp_path, method="magnitude")
    result = export_tiny(ckpt, tmp_path / "onnx")
    assert result.counts == {
        "armor": 0,
        "sparse": N_LINEARS,
        "blocked_mlps": 0,
        "merged_transposes": 0,
    }
    assert result.manifest["counts"]["cores"] == N_LINEARS


def test_float16_export_runs_on_ort(tiny_fp16_export):
    result = tiny_fp16_export
    model = onnx.load(str(result.onnx_path))
    core = next(i for i in model.graph.initializer if i.name.endswith("sparse_core"))
    assert core.data_type == onnx.TensorProto.FLOAT16
    logits_type = next(o for o in model.graph.output if o.name == "logits").type.tensor_type
    assert logits_type.elem_type == onnx.TensorProto.FLOAT16


def test_bfloat16_export_is_typed_and_checked(tiny_checkpoint, tmp_path):
    result = export_tiny(tiny_checkpoint, tmp_path / "bf16", dtype="bfloat16")
    model = onnx.load(str(result.onnx_path))
    core = next(i for i in model.graph.initializer if i.name.endswith("sparse_core"))
    assert core.data_type == onnx.TensorProto.BFLOAT16
    assert result.manifest["counts"]["cores"] == N_LINEARS


@pytest.fixture(scope="module")
def external_export(tiny_checkpoint, tmp_path_factory):
    return export_tiny(
        tiny_checkpoint, tmp_path_factory.mktemp("onnx") / "ext", external_data="always"
    )


def external_copy(export, tmp_path):
    """A copy of an external-data export's graph and data file, to damage."""
    folder = tmp_path / "copy"
    folder.mkdir()
    for name in ("model.onnx", "model.onnx.data"):
        shutil.copyfile(export.output_dir / name, folder / name)
    return folder / "model.onnx"


def test_external_data_is_written_and_loads(external_export):
    result = external_export
    data = result.output_dir / "model.onnx.data"
    assert data.is_file() and data.stat().st_size > 0
    graph_only = onnx.load(str(result.onnx_path), load_external_data=False)
    cores = [i for i in graph_only.graph.initializer if i.name.endswith("sparse_core")]
    assert cores and all(i.data_location == onnx.TensorProto.EXTERNAL for i in cores)
    assert result.manifest["external_data"] == "model.onnx.data"
    assert set(result.manifest["sha256"]) == {
        "model.onnx",
        "model.onnx.data",
        "tokenizer.json",
        "tokenizer_config.json",
        "genai_config.json",
    }
    ort.InferenceSession(str(result.onnx_path))  # loads the weights from beside the graph


@pytest.mark.fault(
    "export",
    "torch's ONNX writer moves the weights to model.onnx.data on its own while our `auto` rule "
    "says inline (weights between its 1.5 GiB threshold and our 1.8e9 bytes)",
    "the manifest lists model.onnx.data, it is published with the graph, the checks ran on the "
    "published folder, and it loads in ONNX Runtime",
)
def test_weights_the_writer_moved_out_on_its_own_are_published(
    tiny_checkpoint, tmp_path, monkeypatch
):
    from torch.onnx._internal.exporter import _onnx_program

    from armor_export.export_manifest import ExportManifest

    monkeypatch.setattr(_onnx_program, "_LARGE_MODEL_THRESHOLD", 0)  # the writer's own rule
    checked = []
    real = checks.check_graph

    def spy(path, *args, **kwargs):
        checked.append(path)
        return real(path, *args, **kwargs)

    monkeypatch.setattr(checks, "check_graph", spy)
    out = tmp_path / "out"
    result = export_tiny(tiny_checkpoint, out)  # external_data "auto": our rule says inline
    assert result.manifest["external_data"] == "model.onnx.data"
    assert (out / "model.onnx.data").is_file()
    assert "model.onnx.data" in ExportManifest.read(out).sha256
    assert checked == [out / "model.onnx"]  # what ships is what is checked
    assert not [p for p in out.iterdir() if p.name.startswith(".export-")]
    ort.InferenceSession(str(out / "model.onnx"))


def test_external_data_checks_read_one_core_at_a_time(external_export, monkeypatch):
    """The graph check reads the external bytes of the 2:4 cores only, one tensor at a time,
    never the whole model (which for a 7B+ model would not fit beside the export)."""
    from onnx import external_data_helper

    read = []
    real = external_data_helper.load_external_data_for_tensor

    def spy(tensor, base_dir):
        read.append(tensor.name)
        return real(tensor, base_dir)

    monkeypatch.setattr(external_data_helper, "load_external_data_for_tensor", spy)
    report = checks.check_graph(external_export.onnx_path, N_LINEARS, 0, plugin=False)
    assert report.cores == N_LINEARS
    graph = onnx.load(str(external_export.onnx_path), load_external_data=False).graph
    external = [i.name for i in graph.initializer if i.data_location == onnx.TensorProto.EXTERNAL]
    assert len(external) > N_LINEARS  # the block-diagonal factors, norms, embeddings too
    assert sorted(read) == sorted(n for n in external if n.endswith("sparse_core"))


@pytest.mark.fault(
    "export",
    "an external-data export whose 2:4 core has a full group of 4 along K",
    "GraphCheckError naming the initializer, read from the data file on its own",
)
def test_broken_core_in_external_data_is_named(external_export, tmp_path):
    from onnx.external_data_helper import ExternalDataInfo

    path = external_copy(external_export, tmp_path)
    graph = onnx.load(str(path), load_external_data=False).graph
    init = next(i for i in graph.initializer if i.name.endswith("sparse_core"))
    info = ExternalDataInfo(init)
    assert init.data_type == onnx.TensorProto.FLOAT and info.location == "model.onnx.data"
    n = init.dims[1]
    with open(path.parent / info.location, "r+b") as data:  # [K, N] row-major: rows 0..3
        for k in range(4):
            data.seek(info.offset + 4 * k * n)
            data.write(np.float32(1.0).tobytes())
    with pytest.raises(GraphCheckError, match=init.name.replace(".", r"\.") + r".*not 2:4 along K"):
        checks.check_graph(path, N_LINEARS, 0, plugin=False)


@pytest.mark.fault(
    "export",
    "an external-data file cut short",
    "GraphCheckError naming an initializer whose bytes are missing",
)
def test_truncated_external_data_is_a_graph_check_error(external_export, tmp_path):
    path = external_copy(external_export, tmp_path)
    data = path.parent / "model.onnx.data"
    with open(data, "r+b") as f:
        f.truncate(data.stat().st_size // 2)
    with pytest.raises(GraphCheckError, match=r"sparse_core"):
        checks.check_graph(path, N_LINEARS, 0, plugin=False)


def test_two_four_checker_names_the_offending_initializer(tiny_export, tmp_path):
    model = onnx.load(str(tiny_export.onnx_path))
    init = next(i for i in model.graph.initializer if i.name.endswith("sparse_core"))
    weight = onnx.numpy_helper.to_array(init).copy()
    weight[:4, 0] = 1.0  # a full group of 4 along K
    init.CopyFrom(onnx.numpy_helper.from_array(weight, init.name))
    bad = tmp_path / "bad.onnx"
    onnx.save(model, str(bad))
    with pytest.raises(GraphCheckError, match=init.name.replace(".", r"\.") + r".*not 2:4 along K"):
        checks.check_graph(bad, N_LINEARS, 0, plugin=False)
    with pytest.raises(GraphCheckError, match="expected 15"):
        checks.check_graph(tiny_export.onnx_path, N_LINEARS + 1, 0, plugin=False)


def test_two_four_violations_counts_groups():
    w = np.zeros((8, 3))
    w[0:2, 0] = 1
    assert checks.two_four_violations(w) == 0
    w[4:7, 2] = 1
    assert checks.two_four_violations(w) == 1
    assert checks.two_four_violations(np.zeros((6, 2))) == -1


def test_reexport_replaces_the_previous_export(tiny_checkpoint, tmp_path):
    out = tmp_path / "re"
    export_tiny(tiny_checkpoint, out, external_data="always")
    result = export_tiny(tiny_checkpoint, out)
    assert not (out / "model.onnx.data").exists()
    assert json.loads((out / "export_manifest.json").read_text())["external_data"] is None
    assert not [p for p in out.iterdir() if p.name.startswith(".export-")]
    ort.InferenceSession(str(result.onnx_path))


@pytest.mark.fault(
    "export",
    "a missing checkpoint, or a prune folder that has not finished",
    "one line; a partial one says to rerun the prune to resume",
)
def test_missing_and_partial_checkpoints_are_clear_errors(tiny_checkpoint, tmp_path):
    from armor_export.errors import UserError

    with pytest.raises(UserError):
        export_tiny(tmp_path / "nowhere", tmp_path / "o1")
    partial = tmp_path / "partial"
    (partial / "work").mkdir(parents=True)
    with pytest.raises(CorruptFileError, match="partial checkpoint"):
        export_tiny(partial, tmp_path / "o2")
    broken = tmp_path / "broken"
    shutil.copytree(tiny_checkpoint, broken)
    (broken / "model.safetensors").unlink()
    with pytest.raises(CorruptFileError, match="model.safetensors"):
        export_tiny(broken, tmp_path / "o3")
    assert not (tmp_path / "o3" / "export_manifest.json").exists()


@pytest.mark.fault(
    "export",
    "export limits beyond the model's context",
    "one line naming the limit",
)
def test_limits_beyond_the_model_are_refused(tiny_checkpoint, tmp_path):
    with pytest.raises(ConfigError, match="max_position_embeddings 256"):
        export_tiny(tiny_checkpoint, tmp_path / "o", limits=ExportLimits(max_context=512))
    with pytest.raises(ConfigError, match="max_prompt 200 exceeds max_context 100"):
        export_tiny(
            tiny_checkpoint, tmp_path / "o", limits=ExportLimits(max_prompt=200, max_context=100)
        )
    with pytest.raises(ConfigError, match="dtype"):
        ExportConfig(dtype="int8").validate()


def test_cli_export_reports_and_refuses_bad_input(tiny_checkpoint, tmp_path, capsys):
    from armor_export.cli.main import main

    code = main(["export", str(tiny_checkpoint), "-o", str(tmp_path / "cli"), "--max-batch", "2"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "14 ArmorLinear" in out and "14 2:4 cores checked along K" in out
    manifest = json.loads((tmp_path / "cli" / "export_manifest.json").read_text())
    assert manifest["limits"]["max_batch"] == 2
    assert main(["export", str(tmp_path / "missing"), "-o", str(tmp_path / "x")]) == 1
    assert "error:" in capsys.readouterr().err


def test_default_export_output_is_what_a_user_acts_on(tiny_checkpoint, tmp_path):
    """The exporter's libraries log dozens of INFO lines per export ("Skipping constant
    folding ..."); at default verbosity only armor-export's own lines and warnings show."""
    import subprocess
    import sys
    from pathlib import Path

    run = subprocess.run(
        [sys.executable, "-m", "armor_export", "export", str(tiny_checkpoint),
         "-o", str(tmp_path / "out")],
        cwd=Path(__file__).resolve().parents[2], capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    assert "Skipping constant folding" not in run.stderr
    assert "exported" in run.stdout


@pytest.mark.fault(
    "export",
    "an export killed with SIGKILL while it traces",
    "its hidden working folder is removed by the next export into that folder",
)
def test_a_killed_export_leaves_nothing_behind_the_next_one(tiny_checkpoint, tmp_path):
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    out = tmp_path / "out"
    proc = subprocess.Popen(
        [sys.executable, "-m", "armor_export", "export", str(tiny_checkpoint), "-o", str(out),
         "-q"],
        cwd=Path(__file__).resolve().parents[2], stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 300
        while not list(out.glob(".export-*")) and proc.poll() is None:
            assert time.monotonic() < deadline, "the export never started writing"
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert list(out.glob(".export-*")), "killed before it made its working folder"
    export_tiny(tiny_checkpoint, out)
    assert not list(out.glob(".export-*"))
    assert (out / "export_manifest.json").is_file()
