"""Numerical parity of exported graphs with their PyTorch source (Polygraphy runners).

The verb is imported on first use, so ``config`` can read the backend names
(``verify/backends.py``) without importing the verb, which imports ``config``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from armor_export.verify.api import VerifyResult, verify

__all__ = ["VerifyResult", "verify"]


def __getattr__(name: str):
    if name in __all__:
        from armor_export.verify import api

        return getattr(api, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
