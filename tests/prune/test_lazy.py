"""Low-memory pruning: layers read from disk one at a time give the in-memory results."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from armor_export.errors import CorruptFileError
from armor_export.io import read_json, read_tensors
from armor_export.models.registry import adapter_for
from armor_export.prune import api
from armor_export.prune.calibrate import calibrate_layerwise
from armor_export.prune.lazy import (
    LazyModel,
    SafetensorsSource,
    TensorEntry,
    load_lazy_model,
    write_safetensors_streaming,
)
from tests.conftest import TEXT, tiny_model, tiny_prune_config, train_tokenizer

FAMILIES = ["llama", "qwen2", "qwen3", "mistral", "gemma"]


@pytest.fixture(scope="module")
def family_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("families")
    tokenizer = train_tokenizer([TEXT])
    dirs = {}
    for family in FAMILIES:
        dirs[family] = root / family
        tiny_model(family).save_pretrained(dirs[family])
        tokenizer.save_pretrained(dirs[family])
    return dirs


def _hdiag(model, batches, lazy=None):
    adapter = adapter_for(model)
    out = {}

    def on_layer(_i, stats):
        out.update({name: st.hdiag(name) for name, st in stats.items()})

    calibrate_layerwise(model, adapter, batches, adapter.linears(model), on_layer, lazy=lazy)
    return out


@pytest.mark.parametrize("family", FAMILIES)
def test_lazy_calibration_equals_in_memory_with_one_layer_resident(
    family, family_dirs, one_torch_thread, monkeypatch
):
    from transformers import AutoModelForCausalLM

    folder = family_dirs[family]
    gen = torch.Generator().manual_seed(0)
    batches = [torch.randint(0, 300, (2, 16), generator=gen) for _ in range(2)]
    eager = _hdiag(AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32), batches)

    lazy = load_lazy_model(folder)
    layers = lazy.model.get_submodule(lazy.layers_path)
    assert all(p.is_meta for p in layers.parameters()) and lazy.model.lm_head.weight.is_meta
    resident = []
    load = LazyModel.load_layer

    def embeddings_released():  # nothing outside the layers stays beside the activations
        in_layers = {id(p) for p in layers.parameters()}
        return all(p.is_meta for p in lazy.model.parameters() if id(p) not in in_layers)

    def counting_load(self, index):
        assert embeddings_released()
        layer = load(self, index)
        resident.append(sum(not next(m.parameters()).is_meta for m in layers))
        return layer

    assert not embeddings_released()
    monkeypatch.setattr(LazyModel, "load_layer", counting_load)
    result = _hdiag(lazy.model, batches, lazy)
    assert resident == [1] * len(layers)  # one decoder layer in memory at a time
    assert all(p.is_meta for p in layers.parameters())  # and released afterwards
    assert result.keys() == eager.keys()
    for name in eager:
        assert torch.equal(result[name], eager[name]), name


def _config(model_dir, text_file, out, low_memory, method="armor"):
    return tiny_prune_config(
        model_dir, text_file, out, method, armor={"iterations": 3}, low_memory=low_memory
    )


@pytest.mark.parametrize("family,method", [("llama", "armor"), ("qwen2", "wanda")])
def test_low_memory_prune_writes_the_same_checkpoint(
    family, method, family_dirs, text_file, tmp_path, one_torch_thread
):
    folder = family_dirs[family]
    eager = api.prune(_config(folder, text_file, tmp_path / "eager", False, method))
    low = api.prune(_config(folder, text_file, tmp_path / "low", True, method))
    assert low.results == {} and low.metrics.keys() == eager.metrics.keys()
    a = read_tensors(tmp_path / "eager" / "model.safetensors")
    b = read_tensors(tmp_path / "low" / "model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        assert a[key].dtype == b[key].dtype and torch.equal(a[key], b[key]), key
    ma = read_json(tmp_path / "eager" / "armor_manifest.json")["matrices"]
    mb = read_json(tmp_path / "low" / "armor_manifest.json")["matrices"]
    for name in ma:
        for entry in (ma[name], mb[name]):
            entry.pop("seconds")
        assert ma[name] == mb[name], name
    for run in ("eager", "low"):  # every prune ends with its report
        assert (tmp_path / run / "report" / "report.html").is_file()
        assert (tmp_path / run / "report" / "report.md").is_file()
    if method == "armor":
        assert low.armor_summary == eager.armor_summary
        assert low.armor_summary["matrices_at_or_below_nowag"] == len(low.metrics)


def test_streaming_writer_round_trips_every_dtype(tmp_path):
    tensors = {
        "f32": torch.randn(3, 5),
        "bf16": torch.randn(4, 2).to(torch.bfloat16),
        "f16": torch.randn(7).half(),
        "u8": torch.randint(0, 255, (6, 3), dtype=torch.uint8),
        "b": torch.rand(2, 2) > 0.5,
        "i64": torch.arange(5),
        "scalar": torch.tensor(2.5),
    }
    entries = [TensorEntry(k, v.dtype, tuple(v.shape), lambda v=v: v) for k, v in tensors.items()]
    write_safetensors_streaming(tmp_path / "s.safetensors", entries, {"format": "x"})
    back = read_tensors(tmp_path / "s.safetensors")
    assert back.keys() == tensors.keys()
    for k, v in tensors.items():
        assert back[k].dtype == v.dtype and torch.equal(back[k], v), k
    header_len = int.from_bytes((tmp_path / "s.safetensors").read_bytes()[:8], "little")
    header = json.loads((tmp_path / "s.safetensors").read_bytes()[8 : 8 + header_len])
    assert header["__metadata__"] == {"format": "x"}


def test_streaming_writer_refuses_a_tensor_unlike_its_declaration(tmp_path):
    bad = [TensorEntry("x", torch.float32, (2, 2), lambda: torch.zeros(3))]
    with pytest.raises(ValueError, match="declared"):
        write_safetensors_streaming(tmp_path / "s.safetensors", bad)
    assert list(tmp_path.iterdir()) == []  # nothing half-written left behind


def test_streaming_writer_converts_a_declared_upcast_a_slice_at_a_time(tmp_path, monkeypatch):
    """A bf16 tensor declared fp32 (how a low-memory checkpoint stores a bf16 embedding)
    is written as the whole tensor's upcast, in slices; without ``convert`` it is refused."""
    from armor_export.prune import lazy

    monkeypatch.setattr(lazy, "_WRITE_ELEMENTS", 5)  # several slices, one of them short
    t = torch.randn(7, 3).to(torch.bfloat16)
    path = tmp_path / "s.safetensors"
    write_safetensors_streaming(path, [TensorEntry("x", torch.float32, (7, 3), lambda: t, True)])
    back = read_tensors(path)["x"]
    assert back.dtype == torch.float32 and torch.equal(back, t.float())
    with pytest.raises(ValueError, match="declared"):
        write_safetensors_streaming(path, [TensorEntry("x", torch.float32, (7, 3), lambda: t)])


def test_source_reports_missing_and_misshapen_tensors(tmp_path, family_dirs):
    folder = tmp_path / "damaged"
    folder.mkdir()
    (folder / "config.json").write_text((family_dirs["llama"] / "config.json").read_text())
    state = read_tensors(family_dirs["llama"] / "model.safetensors")
    state.pop("model.norm.weight")
    save_file(state, folder / "model.safetensors")
    with pytest.raises(CorruptFileError, match="model.norm.weight"):
        load_lazy_model(folder)
    state["model.norm.weight"] = torch.ones(3)
    save_file(state, folder / "model.safetensors")
    with pytest.raises(CorruptFileError, match="shape"):
        load_lazy_model(folder)
    source = SafetensorsSource(family_dirs["llama"])
    with pytest.raises(CorruptFileError, match="nope"):
        source.get("nope")


def test_source_reads_owned_copies_and_rejects_truncated_files(tmp_path, family_dirs):
    source = SafetensorsSource(family_dirs["llama"])
    key = "model.layers.0.mlp.down_proj.weight"
    a, b = source.get(key), source.get(key)
    assert torch.equal(a, b) and a.data_ptr() != b.data_ptr()  # each call owns its memory
    reference = read_tensors(family_dirs["llama"] / "model.safetensors")
    for name, tensor in reference.items():
        assert torch.equal(source.get(name, None), tensor), name
    folder = tmp_path / "cut"
    folder.mkdir()
    data = (family_dirs["llama"] / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptFileError, match="outside the file"):
        SafetensorsSource(folder)


@pytest.mark.fault(
    "prune",
    "--low-memory with NaN/Inf in a tensor that is not pruned (the embedding, the final norm, "
    "a layer norm of a bf16 model)",
    "one line naming the tensor, before anything is written (as the in-memory prune)",
)
@pytest.mark.parametrize(
    "key, value",
    [
        ("model.embed_tokens.weight", float("nan")),
        ("model.norm.weight", float("nan")),
        ("model.layers.1.post_attention_layernorm.weight", float("inf")),
    ],
)
def test_low_memory_refuses_nan_in_an_unpruned_tensor(
    key, value, family_dirs, text_file, tmp_path, monkeypatch
):
    import shutil

    from safetensors.torch import load_file

    from armor_export.prune import lazy

    folder = tmp_path / "model"
    shutil.copytree(family_dirs["llama"], folder)
    state = {k: v.to(torch.bfloat16) for k, v in load_file(folder / "model.safetensors").items()}
    state[key].view(-1)[-1] = value  # the last element: in the last slice the check reads
    save_file(state, folder / "model.safetensors", metadata={"format": "pt"})
    monkeypatch.setattr(lazy, "_CHECK_BYTES", 64)  # many slices, even in a tiny tensor
    out = tmp_path / "out"
    with pytest.raises(CorruptFileError, match=rf"tensor {key} contains NaN or Inf") as info:
        api.prune(_config(folder, text_file, out, True, "magnitude"))
    assert "\n" not in str(info.value)
    assert not out.exists()  # refused before anything was written


@pytest.fixture(scope="module")
def bf16_dirs(tmp_path_factory):
    """Checkpoints stored in bf16, as most published ones are."""
    root = tmp_path_factory.mktemp("bf16")
    tokenizer = train_tokenizer([TEXT])
    dirs = {}
    for family in ("qwen2", "gemma"):
        dirs[family] = root / family
        tiny_model(family).to(torch.bfloat16).save_pretrained(dirs[family])
        tokenizer.save_pretrained(dirs[family])
    return dirs


@pytest.mark.parametrize("family,kept", [("qwen2", True), ("gemma", False)])
def test_bf16_embedding_stays_bf16_and_calibration_is_unchanged(
    family, kept, bf16_dirs, one_torch_thread
):
    """A low-memory run holds a plain embedding in its stored dtype (half of fp32) and
    upcasts the rows it looks up: the statistics are bit-identical to the fp32 model's.
    Gemma scales its embedding output, so its table is upcast as before."""
    from transformers import AutoModelForCausalLM

    folder = bf16_dirs[family]
    gen = torch.Generator().manual_seed(0)
    batches = [torch.randint(0, 300, (2, 16), generator=gen) for _ in range(2)]
    eager = _hdiag(AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32), batches)
    lazy = load_lazy_model(folder)
    emb = lazy.model.get_input_embeddings()
    if kept:
        assert emb.weight.is_meta and emb.weight.dtype == torch.float32  # state dict unchanged
        assert emb.stored_weight.dtype == torch.bfloat16
        assert "model.embed_tokens.weight" in lazy.model.state_dict()
    else:
        assert emb.weight.dtype == torch.float32 and not emb.weight.is_meta
    result = _hdiag(lazy.model, batches, lazy)
    assert result.keys() == eager.keys()
    for name in eager:
        assert torch.equal(result[name], eager[name]), name


def test_low_memory_prune_of_a_bf16_checkpoint_writes_the_same_checkpoint(
    bf16_dirs, text_file, tmp_path, one_torch_thread
):
    folder = bf16_dirs["qwen2"]
    api.prune(_config(folder, text_file, tmp_path / "eager", False))
    api.prune(_config(folder, text_file, tmp_path / "low", True))
    a = read_tensors(tmp_path / "eager" / "model.safetensors")
    b = read_tensors(tmp_path / "low" / "model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        assert a[key].dtype == b[key].dtype and torch.equal(a[key], b[key]), key


def test_pool_workers_are_handed_one_weight_not_the_model(
    family_dirs, text_file, tmp_path, one_torch_thread, monkeypatch
):
    """What a low-memory run sends to a pool worker per job is that job's weight and
    statistics (plus the config), never the lazy model or its reader: measured as the
    pickled size of the submitted arguments."""
    import pickle
    from concurrent.futures import Future

    from armor_export.prune import schedule

    sent: list[tuple[int, int]] = []  # (pickled bytes, bytes of the job's own tensors)

    class InProcessPool:  # records what would cross the process boundary, runs it here
        def __init__(self, *args, **kwargs):
            kwargs["initializer"](*kwargs["initargs"])

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def submit(self, fn, job, cfg):
            own = sum(t.numel() * t.element_size() for t in (job.weight, job.hdiag, job.gram)
                      if t is not None)  # fmt: skip
            sent.append((len(pickle.dumps((fn, job, cfg))), own))
            future = Future()
            future.set_result(fn(job, cfg))
            return future

    monkeypatch.setattr(schedule, "ProcessPoolExecutor", InProcessPool)
    cfg = _config(family_dirs["llama"], text_file, tmp_path / "low", True)
    cfg.workers = 2
    result = api.prune(cfg)
    assert len(sent) == len(result.metrics) > 0
    for pickled, own in sent:
        assert pickled <= own + 16 * 1024, (pickled, own)  # the tensors and a small config
