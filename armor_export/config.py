"""Strict, versioned, serialisable configurations.

Every config is a dataclass; ``from_dict`` rejects unknown keys and wrong types with a
``ConfigError`` naming the key, so a typo in a recipe never silently falls back to a
default.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar, get_type_hints

import tomllib

from armor_export.errors import ConfigError
from armor_export.verify.backends import VERIFY_BACKENDS  # "auto" + the registered runners

log = logging.getLogger(__name__)

CONFIG_VERSION = 1

T = TypeVar("T")


# --- bounds of every count a user can type ----------------------------------------------
# Threads and worker processes: at most 4 per CPU of this machine. More cannot run faster
# (each gets a quarter of a core at best) while each costs memory (a worker holds its jobs'
# matrices, an ONNX Runtime thread its scratch buffers: `generate --threads 100000` started
# some 6,000 threads and grew to 16 GiB); 4x leaves room for CPUs a container hides or
# hyper-threads count once. The other counts have fixed bounds far above any useful value:
# they catch a typo (an extra 0, or three) before it costs hours or all the memory.
PARALLEL_PER_CPU = 4
MAX_TOKENS = 1 << 20  # sequence lengths, contexts, new tokens: 1 M, beyond any model here
MAX_BATCH = 4096  # rows in one forward
MAX_SAMPLES = 1 << 16  # calibration sequences, evaluation windows
MAX_ITERATIONS = 100_000  # solver iterations per matrix (the default is 100)
MAX_DECODE_STEPS = 4096  # verify's decode steps after the prefill
MAX_BLOCK_SIZE = 4096  # a block of 4096² float32 is 64 MiB, per block
MAX_RANKS = 1024  # ranks `plan` may plan for (a cluster's, not this machine's)
MAX_SEED = 2**32 - 1  # every generator we seed takes 0..2**32-1 (NumPy: no negative seed)


def max_parallel() -> int:
    """The most threads or worker processes a run may ask for on this machine."""
    return PARALLEL_PER_CPU * (os.cpu_count() or 1)


def count(default: int | None, low: int, high: int | Callable[[], int], flag: str = ""):
    """A dataclass field holding a count, checked to be in ``low..high`` (``high`` may be a
    function of the machine) by :func:`check_counts`; ``flag`` is the command-line flag that
    sets it, named in the error."""
    return field(default=default, metadata={"bounds": (low, high), "flag": flag})


def check_count(name: str, value: int | None, low: int, high: int | Callable[[], int],
                flag: str = "") -> None:  # fmt: skip
    """A ConfigError naming ``name`` (and its flag), the value and the allowed range, when
    ``value`` is outside ``low..high``; None (unset) passes."""
    why = f" ({PARALLEL_PER_CPU} per CPU, {os.cpu_count()} here)" if high is max_parallel else ""
    high = high() if callable(high) else high
    if value is not None and not low <= value <= high:
        via = f" ({flag})" if flag else ""
        raise ConfigError(f"{name} must be in {low}..{high}{why}, got {value}{via}")


def check_counts(prefix: str, obj: Any) -> None:
    """:func:`check_count` of every field of ``obj`` declared with :func:`count`."""
    for f in dataclasses.fields(obj):
        if "bounds" in f.metadata:
            name = f"{prefix}.{f.name}" if prefix else f.name
            check_count(name, getattr(obj, f.name), *f.metadata["bounds"], f.metadata["flag"])


def validate_section(section: str, cfg: Any) -> None:
    """``cfg.validate()`` of a nested table, its errors named by their full key path
    (``prune.calibration.n_samples``, ``engine.optimization_level``)."""
    try:
        cfg.validate()
    except ConfigError as exc:
        raise ConfigError(f"{section}.{exc}") from None


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(choices)}; got {value!r}")


def _check_targets(value: str) -> str:
    """``compute_capability``: one of COMPUTE_CAPABILITY_SETS, or sm names of
    COMPUTE_CAPABILITIES joined by commas; returned in one spelling (``sm86,sm89``)."""
    names = [part.strip().lower() for part in str(value).split(",") if part.strip()]
    if len(names) == 1 and names[0] in COMPUTE_CAPABILITY_SETS:
        return names[0]
    single = [n for n in COMPUTE_CAPABILITIES if n not in COMPUTE_CAPABILITY_SETS]
    if not names or any(n not in single for n in names):
        raise ConfigError(
            f"compute_capability must be {' or '.join(COMPUTE_CAPABILITY_SETS)}, or one or more "
            f"of {', '.join(single)} joined by commas; got {value!r}"
        )
    return ",".join(n for n in single if n in names)


CONTINUOUS_STEPS = ("exact", "adam")  # block least squares | the authors' Adam step
WEIGHTINGS = ("normalized", "output")  # the authors' NoWag loss | layer-output error
BATCH_SAME_SHAPE = ("auto", "on", "off")  # prune/batching.py


@dataclass
class ArmorConfig:
    """ARMOR optimiser settings (docs/design.md §3; defaults tuned for CPU minutes, see README)."""

    block_size: int = count(64, 4, MAX_BLOCK_SIZE, "--block-size")
    iterations: int = count(100, 0, MAX_ITERATIONS, "--iterations")
    continuous_step: str = "exact"  # "exact" (block least squares) | "adam" (authors)
    lr: float = 1e-4
    cg_steps: int = 4
    groups_per_tile: int = 0  # 0: block_size // 4, adapted as it runs
    patience: int = 20
    tolerance: float = 1e-6
    compile: bool = True  # torch.compile the elementwise group maths (falls back to eager)
    # "normalized": the authors' loss in NoWag coordinates (docs/design.md §2.5); "output": the true
    # layer-output error (rows weighted by r_i², columns by c_j² h_j), an ablation
    weighting: str = "normalized"

    def validate(self) -> None:
        _check_choice("armor.continuous_step", self.continuous_step, CONTINUOUS_STEPS)
        _check_choice("armor.weighting", self.weighting, WEIGHTINGS)
        check_counts("armor", self)
        if self.block_size <= 0 or self.block_size % 4:
            raise ConfigError(
                f"armor.block_size must be a positive multiple of 4, got {self.block_size}"
            )


@dataclass
class SparseGPTConfig:
    block_size: int = count(128, 4, MAX_BLOCK_SIZE)
    damp: float = 0.01
    sequential: bool = True  # propagate pruned outputs to the next layer

    def validate(self) -> None:
        check_counts("sparsegpt", self)
        if self.block_size <= 0 or self.block_size % 4:
            raise ConfigError("sparsegpt.block_size must be a positive multiple of 4")


@dataclass
class CalibrationConfig:
    text: str = "botchan"
    n_samples: int = count(128, 1, MAX_SAMPLES, "--calib-samples")
    seqlen: int = count(512, 1, MAX_TOKENS, "--calib-seqlen")  # and the model's positions
    batch_size: int = count(8, 1, MAX_BATCH)
    seed: int = count(0, 0, MAX_SEED, "--seed")

    def validate(self) -> None:
        check_counts("calibration", self)


@dataclass
class EvalConfig:
    text: str = "wikipedia"
    n_windows: int = count(64, 1, MAX_SAMPLES, "--windows/--eval-windows")
    seqlen: int = count(1024, 1, MAX_TOKENS, "--seqlen/--eval-seqlen")  # and the model's
    batch_size: int = count(4, 1, MAX_BATCH, "--batch-size")

    def validate(self) -> None:
        check_counts("eval", self)


@dataclass
class PruneConfig:
    """Everything one ``prune`` run needs; saved into the checkpoint manifest."""

    model: str = "smollm2-135m"
    method: str = "armor"
    output_dir: str = "runs/armor"
    include: list[str] = field(default_factory=lambda: ["*"])
    exclude: list[str] = field(default_factory=lambda: ["*lm_head*", "*embed*"])
    skip_incompatible: bool = False
    device: str = "cpu"  # where the per-matrix solves run (e.g. "cuda:0")
    # processes for independent jobs; 0 = one per CPU core
    workers: int = count(0, 0, max_parallel, "--workers")
    low_memory: bool = False  # read decoder layers and weights from disk one at a time
    # same-shape ARMOR jobs as one batched solve: auto (GPU, when a probe shows it faster),
    # on, off (prune/batching.py)
    batch_same_shape: str = "auto"
    armor: ArmorConfig = field(default_factory=ArmorConfig)
    sparsegpt: SparseGPTConfig = field(default_factory=SparseGPTConfig)
    calibration: CalibrationConfig = field(default_factory=CalibrationConfig)
    version: int = CONFIG_VERSION

    def validate(self) -> None:
        from armor_export.prune import methods  # lazily: the torch-free runtime reads config

        _check_choice("method", self.method, methods.names())
        _check_choice("batch_same_shape", self.batch_same_shape, BATCH_SAME_SHAPE)
        if self.version != CONFIG_VERSION:
            raise ConfigError(
                f"version {self.version} is not supported (expected {CONFIG_VERSION})"
            )
        self._validate_device()
        check_counts("", self)
        self.armor.validate()
        self.sparsegpt.validate()
        self.calibration.validate()

    def _validate_device(self) -> None:
        import torch

        try:
            device = torch.device(self.device)
        except RuntimeError:
            raise ConfigError(f"device {self.device!r} is not a torch device") from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ConfigError(f"device {self.device!r} asked for, but torch sees no CUDA GPU")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PruneConfig:
        cfg = from_dict(cls, data)
        cfg.validate()
        return cfg

    @classmethod
    def from_toml(cls, path: str | Path) -> PruneConfig:
        return cls.from_dict(read_toml(path))


EXPORT_DTYPES = ("float32", "float16", "bfloat16")
LOWERINGS = ("plain", "plugin")
EXTERNAL_DATA = ("auto", "always", "never")


@dataclass
class ExportLimits:
    """Shapes the exported graph is promised to handle (engine profiles, runtime checks)."""

    max_batch: int = count(8, 1, MAX_BATCH, "--max-batch")
    # tokens in one forward (prefill); 0 = min(1024, max_context)
    max_prompt: int = count(0, 0, MAX_TOKENS, "--max-prompt")
    # past + new tokens; 0 = the model's max_position_embeddings
    max_context: int = count(0, 0, MAX_TOKENS, "--max-context")

    def validate(self) -> None:
        check_counts("limits", self)


@dataclass
class ExportConfig:
    """One ``export`` run: which checkpoint, into which folder, in which form."""

    model: str = "runs/armor"  # pruned checkpoint (or any dense HF model / 'smollm2-135m')
    output_dir: str = "runs/onnx"
    dtype: str = "float32"
    lowering: str = "plain"  # "plain": MatMuls only (ORT); "plugin": TensorRT plugin nodes
    opset: int = 18
    external_data: str = "auto"  # weights beside the graph: auto = only when over 2 GB
    limits: ExportLimits = field(default_factory=ExportLimits)
    version: int = CONFIG_VERSION

    def validate(self) -> None:
        _check_choice("dtype", self.dtype, EXPORT_DTYPES)
        _check_choice("lowering", self.lowering, LOWERINGS)
        _check_choice("external_data", self.external_data, EXTERNAL_DATA)
        if self.opset < 18:
            raise ConfigError(f"opset must be >= 18 (the dynamo exporter), got {self.opset}")
        self.limits.validate()

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


QUANT_NONE = "none"


def quant_schemes() -> tuple[str, ...]:
    """The registered quantization schemes (``quant/schemes``; torch-free)."""
    from armor_export.quant import schemes

    return schemes.names()


@dataclass
class QuantizeConfig:
    """``armor-export quantize`` / the build's ``quantize`` stage: a pruned checkpoint's 2:4
    cores to 8 bits (docs/quant.md). ``scheme = "none"`` leaves the cores in float."""

    scheme: str = QUANT_NONE  # "none" or a registered scheme (int8, fp8)
    model: str = "runs/armor"  # the pruned checkpoint
    output_dir: str = "runs/armor-int8"
    refit: bool = True  # ARMOR: re-fit A and B around the quantized core
    refit_iterations: int = count(20, 0, 1000)
    # SmoothQuant alpha folded into B (ARMOR); "none": off; "auto": the scheme's (int8: 0.5)
    smoothing: float | str | None = "auto"
    dense_model: str | None = None  # default: the model the checkpoint was pruned from
    # globs of cores whose input stays in float (weight-only); None: the scheme's default
    float_activations: list[str] | None = None
    version: int = CONFIG_VERSION

    def validate(self) -> None:
        check_counts("", self)
        _check_choice("scheme", self.scheme, (QUANT_NONE, *quant_schemes()))
        if self.enabled:
            self.settings().validate()

    @property
    def enabled(self) -> bool:
        return self.scheme != QUANT_NONE

    def settings(self):
        """The ``quant.api.QuantSettings`` this config asks for (the result's key)."""
        from armor_export.quant.api import QuantSettings

        globs = None if self.float_activations is None else tuple(self.float_activations)
        smoothing = None if self.smoothing == "none" else self.smoothing
        return QuantSettings(self.scheme, self.refit, self.refit_iterations, smoothing, globs)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


DEFAULT_PROMPTS = [
    "The capital of France is",
    "Sparse matrices with two of every four weights kept can run faster on tensor cores",
]


@dataclass
class VerifyConfig:
    """One parity check: PyTorch vs the exported graph on the same prefill and decode inputs."""

    export_dir: str = "runs/onnx"
    model: str = ""  # the PyTorch source; "" = the checkpoint recorded in the export manifest
    # "auto": ONNX Runtime (NumPy reference for plugin graphs) + TensorRT when usable
    backends: list[str] = field(default_factory=lambda: ["auto"])
    prompts: list[str] = field(default_factory=lambda: list(DEFAULT_PROMPTS))
    decode_steps: int = count(1, 0, MAX_DECODE_STEPS, "--decode-steps")
    atol: float = 0.0  # 0 = the default for the export dtype (verify/tolerances.py)
    rtol: float = 0.0
    report_dir: str = ""  # "" = <export_dir>/verify
    # the built engine to check: "" = <export_dir>/engine when it holds model.engine
    engine_dir: str = ""
    plugin_library: str = ""  # "" = the library recorded in the engine's build report

    def validate(self) -> None:
        for backend in self.backends:
            _check_choice("backends", backend, VERIFY_BACKENDS)
        if not self.prompts or not all(p.strip() for p in self.prompts):
            raise ConfigError("prompts: give at least one non-empty prompt")
        for index, prompt in enumerate(self.prompts):
            check_prompt_text(index, prompt)
        check_counts("", self)
        if self.atol < 0 or self.rtol < 0:
            raise ConfigError("atol and rtol must be >= 0")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# engine backends by the names verify and the runtime use too
TENSORRT_RTX = "tensorrt-rtx"  # TensorRT-RTX: builds ahead of time, on a CPU too
TENSORRT = "tensorrt"  # datacenter TensorRT: builds for the local GPU
ENGINE_BACKENDS = (TENSORRT_RTX, TENSORRT)
# the names the engine verb used first; configs and commands with them keep working
ENGINE_BACKEND_ALIASES = {"rtx": TENSORRT_RTX, "trt": TENSORRT}
# TensorRT-RTX targets (engine/targets.py): "default" is TensorRT-RTX's own portable set (sm80,
# sm86, sm89, sm120 and later), "current" the GPU here, else a comma-separated list of these sm
# names (the members of TensorRT-RTX 1.7's ComputeCapability; Hopper sm90 is not one)
COMPUTE_CAPABILITY_SETS = ("default", "current")
COMPUTE_CAPABILITIES = COMPUTE_CAPABILITY_SETS + ("sm75", "sm80", "sm86", "sm89", "sm120", "sm121")


@dataclass
class EngineConfig:
    """One TensorRT / TensorRT-RTX engine build from an export folder."""

    export_dir: str = "runs/onnx"
    output_dir: str = ""  # "" = <export_dir>/engine
    backend: str = TENSORRT_RTX  # one of ENGINE_BACKENDS ("rtx"/"trt" are read as aliases)
    compute_capability: str = "default"  # TensorRT-RTX targets: default, current, or sm86,sm89
    sparse_weights: bool = True
    max_batch: int = count(0, 0, MAX_BATCH, "--max-batch")  # 0 = the export's limits
    max_prompt: int = count(0, 0, MAX_TOKENS, "--max-prompt")
    max_context: int = count(0, 0, MAX_TOKENS, "--max-context")
    optimization_level: int = count(3, 0, 5, "--optimization-level")
    timing_cache: str = ""  # "" = <output_dir>/timing.cache (reused across builds)
    plugin_library: str = ""  # the block-diagonal plugin .so, for plugin-lowered exports

    def validate(self) -> None:
        if self.backend in ENGINE_BACKEND_ALIASES:
            new = ENGINE_BACKEND_ALIASES[self.backend]
            log.warning("engine backend %r is now called %r: reading it as that", self.backend, new)
            self.backend = new
        _check_choice("backend", self.backend, ENGINE_BACKENDS)
        self.compute_capability = _check_targets(self.compute_capability)
        check_counts("", self)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _stage_names() -> tuple[str, ...]:
    """The registered build stages, in run order (``armor_export/stages/``)."""
    from armor_export.stages import stage_names  # torch-free; late: a stage may import config

    return stage_names()


@dataclass
class BuildConfig:
    """``armor-export build``: prune → export → engine → verify into one folder.

    The stages are those registered in ``armor_export.stages``; each derives its paths from
    ``output_dir`` (checkpoint/, onnx/, engine/, verify/) and its other settings from its
    nested table (its ``section``).
    """

    model: str = "smollm2-135m"  # a HF model to prune, or an existing pruned checkpoint
    output_dir: str = "runs/build"
    stages: list[str] = field(default_factory=lambda: list(_stage_names()))
    prune: PruneConfig = field(default_factory=PruneConfig)
    quantize: QuantizeConfig = field(default_factory=QuantizeConfig)
    export: ExportConfig = field(default_factory=lambda: ExportConfig(dtype="float16"))
    engine: EngineConfig = field(default_factory=EngineConfig)
    verify: VerifyConfig = field(default_factory=VerifyConfig)
    version: int = CONFIG_VERSION

    def validate(self) -> None:
        for stage in self.stages:
            _check_choice("stages", stage, _stage_names())
        if self.version != CONFIG_VERSION:
            raise ConfigError(f"config version {self.version} is not supported")
        for section in ("quantize", "export", "engine", "verify"):
            validate_section(section, getattr(self, section))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_toml(cls, path: str | Path) -> BuildConfig:
        cfg = from_dict(cls, read_toml(path))
        cfg.validate()
        return cfg


RUNTIME_BACKENDS = ("onnxruntime", TENSORRT)  # runtime/session.py opens each


@dataclass
class SamplingConfig:
    """How to pick each next token; ``temperature == 0`` means greedy."""

    temperature: float = 0.0
    top_k: int = 0  # 0 = no top-k filter
    top_p: float = 1.0  # 1.0 = no nucleus filter
    seed: int | None = count(None, 0, MAX_SEED, "--seed")

    def validate(self) -> None:
        check_counts("", self)
        if not self.temperature >= 0:
            raise ConfigError(f"temperature must be >= 0 (0 = greedy), got {self.temperature}")
        if self.top_k < 0:
            raise ConfigError(f"top_k must be >= 0 (0 = off), got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"top_p must be in (0, 1] (1 = off), got {self.top_p}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


@dataclass
class GenerationConfig:
    """How many tokens to generate and how to pick them."""

    max_new_tokens: int = count(64, 1, MAX_TOKENS, "--max-new-tokens")
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    stop_at_eos: bool = True  # False: always generate max_new_tokens (benchmarks, tests)

    def validate(self) -> None:
        check_counts("", self)
        self.sampling.validate()


def check_prompt_text(index: int, prompt: str) -> None:
    """A ConfigError when prompt ``index`` is not UTF-8 text: Python keeps the bytes of a
    command-line argument that are not UTF-8 as lone surrogates, which no tokenizer takes."""
    try:
        prompt.encode("utf-8")
    except UnicodeEncodeError as exc:
        code = ord(prompt[exc.start])
        what = f"byte 0x{code - 0xDC00:02x}" if 0xDC80 <= code <= 0xDCFF else f"U+{code:04X}"
        raise ConfigError(
            f"prompt {index} is not UTF-8 text ({what} at character {exc.start}): pass the "
            "prompt in UTF-8 (check the terminal's or the file's encoding)"
        ) from None


def read_toml(path: str | Path) -> dict[str, Any]:
    """A TOML file as a dict; a missing or invalid file is a ConfigError naming it."""
    try:
        return tomllib.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None


def from_dict(cls: type[T], data: dict[str, Any], where: str = "") -> T:
    """Build dataclass ``cls`` from ``data``, recursing into nested dataclasses; strict."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where.rstrip('.') or 'config'} must be a table/dict")
    hints = get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"unknown config key(s) {', '.join(where + k for k in unknown)}")
    kwargs = {}
    defaults = cls()
    for key, value in data.items():
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            # a nested table overrides only the keys it names, on top of this class's own
            # default for the field (BuildConfig's export defaults to float16, say)
            nested = from_dict(hint, value, f"{where}{key}.")
            base = dataclasses.asdict(getattr(defaults, key))
            named = _merge(base, value)
            kwargs[key] = from_dict(hint, named, f"{where}{key}.") if named != value else nested
            continue
        kwargs[key] = _coerce(value, hint, where + key)
    return cls(**kwargs)


def _merge(base: dict, override: dict) -> dict:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            merged[key] = _merge(base[key], value)
        else:
            merged[key] = value
    return merged


def _coerce(value: Any, hint: Any, key: str) -> Any:
    origin = getattr(hint, "__origin__", None)
    if origin is list:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{key} must be a list of strings")
        return list(value)
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint in (int, float, str, bool) and (
        not isinstance(value, hint) or (hint is int and isinstance(value, bool))
    ):
        raise ConfigError(f"{key} must be of type {hint.__name__}, got {value!r}")
    return value
