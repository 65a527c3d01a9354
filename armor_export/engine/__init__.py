"""TensorRT / TensorRT-RTX engine building with 2:4 sparse weights."""

from armor_export.engine.api import EngineResult, build_engine

__all__ = ["EngineResult", "build_engine"]
