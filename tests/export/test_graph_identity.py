"""The exported graph is a function of the checkpoint and GRAPH_REVISION alone.

- Exporting one checkpoint twice gives byte-identical files.
- The graph's form matches fingerprints recorded in ``graph_fingerprints.json``: every
  node, attribute, input, output and initializer's name, type and shape. Left out are the
  weights' values, which depend on the CPU's float rounding in the prune, and the
  tracer's per-node debug metadata (``pkg.torch.onnx.stack_trace`` and the like), which
  names the exporter's source files by absolute path and line number, so it changes with
  the install folder and with any edit that moves a line. A change of the exported
  graph must bump ``export.api.GRAPH_REVISION`` (so ``build`` redoes old exports) and
  re-record them: ``python -m tests.export.test_graph_identity --update``.

The recorded fingerprints were made with the code before the registry refactor of issue
#16, so this test also proves that refactor left the graphs unchanged.
"""

from __future__ import annotations

import hashlib
import json
import sys
import tempfile
from pathlib import Path

import pytest

FINGERPRINTS = Path(__file__).with_name("graph_fingerprints.json")
# name -> (method, family, export options)
CASES = {
    "llama-armor-plain-float32": ("armor", "llama", {}),
    "llama-armor-plain-float16": ("armor", "llama", {"dtype": "float16"}),
    "llama-armor-plugin-float32": ("armor", "llama", {"lowering": "plugin"}),
    "llama-magnitude-plain-float32": ("magnitude", "llama", {}),
    "qwen2-armor-plain-float32": ("armor", "qwen2", {}),
}


def versions() -> dict[str, str]:
    import onnx
    import onnxscript
    import torch
    import transformers

    from armor_export.export.api import GRAPH_REVISION

    return {
        "graph_revision": str(GRAPH_REVISION),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "onnx": onnx.__version__,
        "onnxscript": onnxscript.__version__,
    }


def graph_fingerprint(onnx_path: Path) -> str:
    """sha256 of the model without initializer values and per-node debug metadata (names,
    types, shapes and everything else kept)."""
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    for node in model.graph.node:
        node.ClearField("metadata_props")
        node.ClearField("doc_string")
    for init in model.graph.initializer:
        for field in ("raw_data", "float_data", "int32_data", "int64_data", "double_data"):
            init.ClearField(field)
        init.ClearField("external_data")
        init.data_location = onnx.TensorProto.DEFAULT
    return hashlib.sha256(model.SerializeToString(deterministic=True)).hexdigest()


def export_case(root: Path, name: str) -> Path:
    """Prune the tiny model of the case and export it; returns the ONNX path."""
    import torch

    from tests.conftest import export_tiny, prune_tiny

    method, family, options = CASES[name]
    torch.set_num_threads(1)
    checkpoint = prune_tiny(root, method, family)
    return export_tiny(checkpoint, root / name, **options).onnx_path


@pytest.fixture(scope="module")
def recorded() -> dict:
    pytest.importorskip("onnxscript")
    data = json.loads(FINGERPRINTS.read_text())
    have = versions()
    if data["versions"]["graph_revision"] != have["graph_revision"]:
        pytest.fail(
            f"GRAPH_REVISION is {have['graph_revision']} but the fingerprints were recorded "
            f"at {data['versions']['graph_revision']}: re-record them "
            "(python -m tests.export.test_graph_identity --update)"
        )
    differ = {k: (v, have[k]) for k, v in data["versions"].items() if have[k] != v}
    if differ:
        pytest.skip(f"fingerprints were recorded with other versions: {differ}")
    return data["fingerprints"]


@pytest.mark.parametrize("name", sorted(CASES))
def test_graph_form_is_the_recorded_one(name, recorded, tmp_path):
    assert set(recorded) == set(CASES)
    assert graph_fingerprint(export_case(tmp_path, name)) == recorded[name]


def test_one_checkpoint_exports_to_identical_bytes(tiny_checkpoint, tmp_path):
    from tests.conftest import export_tiny

    first = export_tiny(tiny_checkpoint, tmp_path / "first").onnx_path.read_bytes()
    second = export_tiny(tiny_checkpoint, tmp_path / "second").onnx_path.read_bytes()
    assert hashlib.sha256(first).digest() == hashlib.sha256(second).digest()


def _update() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        prints = {name: graph_fingerprint(export_case(Path(tmp), name)) for name in CASES}
    data = {"versions": versions(), "fingerprints": prints}
    FINGERPRINTS.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    print(f"wrote {FINGERPRINTS}")


if __name__ == "__main__" and "--update" in sys.argv:
    _update()
