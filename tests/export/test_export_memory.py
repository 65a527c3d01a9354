"""A float16 export loads its checkpoint straight in float16 (#19): same files as before.

Before, the export loaded the checkpoint in float32 and converted the model; passing such a
model to ``export_onnx`` still takes that route, so the two exports must be the same bytes,
weights (external data) included. The phases' memory is logged at debug level (``-vv``).
"""

from __future__ import annotations

import logging

import pytest

from armor_export.config import ExportConfig


def test_float16_export_equals_the_float32_load_converted(tiny_checkpoint, tmp_path, caplog):
    pytest.importorskip("onnxscript")
    from armor_export.eval.api import load_any_model
    from armor_export.export import export_onnx

    def config(name):
        return ExportConfig(model=str(tiny_checkpoint), output_dir=str(tmp_path / name),
                            dtype="float16", external_data="always")  # fmt: skip

    with caplog.at_level(logging.DEBUG, logger="armor_export.export.api"):
        lean = export_onnx(config("lean"))
    model, tokenizer, manifest = load_any_model(str(tiny_checkpoint))  # float32
    converted = export_onnx(config("converted"), None, model, tokenizer, manifest)
    for name in ("model.onnx", "model.onnx.data"):
        assert (lean.output_dir / name).read_bytes() == (
            converted.output_dir / name
        ).read_bytes(), name
    assert lean.manifest["sha256"] == converted.manifest["sha256"]
    stages = [r.getMessage() for r in caplog.records if r.getMessage().startswith("memory")]
    for stage in ("loading", "lowering", "tracing", "optimising the graph",
                  "saving the graph", "checking the graph"):  # fmt: skip
        assert any(line.startswith(f"memory after {stage}: ") for line in stages), stage
    assert all("MiB resident, peak" in line for line in stages)
