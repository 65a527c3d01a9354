"""ONNX export of ARMOR models: lowering, the KV-cache decoder graph, graph checks."""

from armor_export.export.api import ExportResult, export_onnx, read_export_manifest

__all__ = ["ExportResult", "export_onnx", "read_export_manifest"]
