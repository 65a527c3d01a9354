"""Error types.

`UserError` and its subclasses are problems with the user's input (bad path, bad shape,
unknown architecture...): the CLI prints their one-line message and exits 1. Anything
else is a bug and keeps its traceback.
"""


class UserError(Exception):
    """A problem with the user's input; shown as one line, exit code 1."""


class ConfigError(UserError):
    """An invalid or unknown configuration value."""


class ShapeError(UserError):
    """A layer's shape does not fit the requested sparsity/block structure."""


class UnsupportedModelError(UserError):
    """The model's architecture has no registered adapter."""


class CorruptFileError(UserError):
    """A file on disk is missing, truncated or not what it claims to be."""


class StatisticsError(UserError):
    """Calibration statistics are unusable (NaN/Inf, no tokens seen)."""


class AssetError(UserError):
    """A default asset (model, corpus) could not be fetched or prepared."""


class GraphCheckError(UserError):
    """An exported graph failed a structural check (names what failed)."""


class BackendUnavailableError(UserError):
    """An optional runtime/backend (ONNX Runtime, TensorRT...) is missing or cannot run this."""


class OutputInUseError(UserError):
    """Another process is writing the same output folder."""


class NonFiniteOutputError(UserError):
    """A model produced NaN/Inf outputs: its export or weights are damaged."""


class OutputError(UserError):
    """A file or folder could not be written for a reason the user fixes: a full disk, a
    read-only folder, no permission, a file where a folder is needed (``io.user_os_error``)."""


class QuantScaleError(UserError):
    """A quantization scale is NaN, infinite, zero or negative (names the tensor)."""
