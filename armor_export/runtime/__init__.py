"""Torch-free inference on an export folder: numpy, ``tokenizers`` and ONNX Runtime only.

Usage: ``Generator("runs/onnx").generate(["Once upon a time"], GenerationConfig(32))``;
``Generator.prefill`` and ``Generator.step`` are the two forwards ``generate`` is made of, for
callers that pick tokens or time the steps themselves.
"""

from armor_export.config import GenerationConfig, SamplingConfig
from armor_export.runtime.generate import (
    DecodeState,
    GenerationResult,
    Generator,
    generate,
)
from armor_export.runtime.sampling import Sampler
from armor_export.runtime.session import OrtSession, Session, open_session

__all__ = [
    "DecodeState",
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
