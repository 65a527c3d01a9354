"""Torch-free inference on an export folder: numpy, ``tokenizers`` and ONNX Runtime only.

Usage: ``Generator("runs/onnx").generate(["Once upon a time"], GenerationConfig(32))``.
"""

from armor_export.runtime.generate import (
    GenerationConfig,
    GenerationResult,
    Generator,
    generate,
)
from armor_export.runtime.sampling import Sampler, SamplingConfig
from armor_export.runtime.session import OrtSession, Session, open_session

__all__ = [
    "GenerationConfig",
    "GenerationResult",
    "Generator",
    "OrtSession",
    "Sampler",
    "SamplingConfig",
    "Session",
    "generate",
    "open_session",
]
