"""armor-export: ARMOR 2:4 pruning of Hugging Face causal LMs, with export to ONNX/TensorRT."""

__version__ = "0.1.0"
