"""Perplexity: in PyTorch (``perplexity``), or torch-free through an export (``eval.exported``).

``perplexity`` is imported on first use, so ``armor_export.eval.api`` and ``eval.exported`` load
without torch (``eval`` of an export folder runs on numpy and ONNX Runtime only).
"""

from __future__ import annotations

__all__ = ["perplexity"]


def __getattr__(name: str):
    if name == "perplexity":
        from armor_export.eval.perplexity import perplexity

        # importing the submodule bound its name here to the module: the function wins
        globals()["perplexity"] = perplexity
        return perplexity
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
