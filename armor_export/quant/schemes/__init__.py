"""Quantization schemes: one module per scheme, each registering one :class:`QuantScheme`."""

import importlib

from armor_export.quant.schemes.base import QuantScheme, get, names, register, unregister

# the built-in schemes register themselves on import, in this order (CLI choices, docs)
BUILT_IN = ("int8", "fp8")
for _module in BUILT_IN:
    importlib.import_module(f"{__name__}.{_module}")

__all__ = ["QuantScheme", "get", "names", "register", "unregister"]
