"""Numerical parity of exported graphs with their PyTorch source (Polygraphy runners)."""

from armor_export.verify.api import VerifyResult, verify

__all__ = ["VerifyResult", "verify"]
