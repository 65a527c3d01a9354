"""Quantize a pruned checkpoint's 2:4 cores to 8 bits (docs/quant.md).

For every pruned matrix, in the checkpoint's own coordinates:

1. optional SmoothQuant-style smoothing (ARMOR only): the core's input is ``u = B x``; with
   ``σ_j = amax(u_j)^α / amax(S[:, j])^(1-α)`` the core becomes ``S diag(σ)`` (its zeros
   stay zero) and ``B`` becomes ``diag(1/σ) B`` (still block diagonal): the same product,
   with the activation's outlier channels moved into the weight, at no run-time cost;
2. the core's weight is quantized per output channel (``quant/core.py``);
3. ARMOR-aware re-fit: ``A`` and ``B`` are re-solved, block by block and exactly, with the
   quantized core held fixed, on the same calibration-weighted proxy loss the pruning used
   (``prune/armor.py``'s ``a_step``/``b_step``, which never raise the loss; the best
   iterate is kept), so the wrappers absorb the quantization error. Baselines, which have no
   wrappers, are quantized plainly.

Each matrix's proxy loss is recorded pruned, quantized and re-fitted. Then a calibration pass
through the model with quantized weights gives each core's per-tensor activation scale.
Every per-matrix result and both calibration passes are stored under ``<out>/work/quant``
keyed on what they came from, so a run killed at any point redoes nothing finished.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from armor_export.errors import CorruptFileError, UserError
from armor_export.io import read_metadata, read_tensors, write_tensors
from armor_export.progress import NullReporter, Reporter
from armor_export.quant import schemes
from armor_export.quant.core import activation_scale, quantize, stored_bits, weight_scales

log = logging.getLogger(__name__)

WORK = Path("work") / "quant"
AUTO = "auto"  # a setting that takes the scheme's default
# bumped when the same settings would give other results: a build's quantize stage redoes
QUANT_REVISION = 1


@dataclass
class QuantSettings:
    """What decides a quantization's result (its key)."""

    scheme: str = "int8"
    refit: bool = True  # ARMOR: re-fit A and B around the quantized core
    refit_iterations: int = 20  # rounds of (A step, B step) at most
    # SmoothQuant α folded into B (ARMOR only); None: off; "auto": the scheme's default
    smoothing: float | str | None = AUTO
    # globs of cores kept weight-only (float input); None: the scheme's default
    float_activations: tuple[str, ...] | None = None

    def alpha(self) -> float | None:
        """The smoothing α this run uses (None: no smoothing)."""
        if self.smoothing == AUTO:
            return schemes.get(self.scheme).smoothing
        return None if self.smoothing is None else float(self.smoothing)

    def weight_only(self, name: str) -> bool:
        """Whether core ``name``'s input stays in float (only its weight is 8-bit)."""
        from fnmatch import fnmatchcase

        globs = self.float_activations
        if globs is None:
            globs = schemes.get(self.scheme).float_activations
        return any(fnmatchcase(name, g) for g in globs)

    def validate(self) -> None:
        from armor_export.errors import ConfigError

        if self.scheme not in schemes.names():
            raise ConfigError(
                f"unknown quantization scheme {self.scheme!r}; choose one of "
                + ", ".join(schemes.names())
            )
        if not isinstance(self.refit_iterations, int) or not 0 <= self.refit_iterations <= 1000:
            raise ConfigError("refit_iterations must be an integer in [0, 1000]")
        if self.smoothing not in (None, AUTO) and not (
            isinstance(self.smoothing, (int, float)) and 0.0 <= float(self.smoothing) <= 1.0
        ):
            raise ConfigError(
                f"smoothing must be an α in [0, 1], 'none' or 'auto', got {self.smoothing!r}"
            )


# ---------------------------------------------------------------------------------------
# one matrix


@dataclass
class MatrixQuant:
    """One quantized matrix: stored values and scales, the (re-fitted) wrappers, losses."""

    values: torch.Tensor  # [d_out, d_in] in the scheme's dtype, zeros off the mask
    weight_scale: torch.Tensor  # [d_out] float32
    a_blocks: torch.Tensor | None
    b_blocks: torch.Tensor | None
    metrics: dict


def smoothing_factors(channel_amax: torch.Tensor, core: torch.Tensor, alpha: float) -> torch.Tensor:
    """SmoothQuant's per-input-channel ``σ_j = amax(u_j)^α / amax(S[:, j])^(1-α)``; 1 where
    either side is zero (a dead channel or column stays as it is)."""
    w = core.abs().amax(dim=0).float()
    a = channel_amax.float()
    ok = (a > 0) & (w > 0)
    sigma = a.clamp_min(1e-30).pow(alpha) / w.clamp_min(1e-30).pow(1.0 - alpha)
    sigma = torch.where(ok & torch.isfinite(sigma) & (sigma > 0), sigma, torch.ones_like(sigma))
    return sigma


class _Proxy:
    """The pruning's proxy loss of one matrix in NoWag coordinates (docs/design.md §2),
    with the wrappers' folded scales taken out so ``a_step``/``b_step`` apply as is."""

    def __init__(self, weight: torch.Tensor, hdiag: torch.Tensor, block: int | None):
        from armor_export.prune.armor import _Problem
        from armor_export.prune.proxy import clean_hdiag, normalize

        self.norm = normalize(weight.float())
        self.hdiag = clean_hdiag(hdiag.float())
        self.block = block
        self.prob = _Problem(self.norm.w_bar[None], self.hdiag[None], block or 4)

    def unfold(self, a_out: torch.Tensor, b_out: torch.Tensor):
        bs = self.block
        a = a_out.float() / self.norm.row_scale.reshape(-1, bs, 1)
        b = b_out.float() / self.norm.col_scale.reshape(-1, 1, bs)
        return a[None], b[None]

    def fold(self, a: torch.Tensor, b: torch.Tensor):
        bs = self.block
        return a[0] * self.norm.row_scale.reshape(-1, bs, 1), b[0] * self.norm.col_scale.reshape(
            -1, 1, bs
        )

    def armor_loss(self, a_out, core, b_out) -> float:
        a, b = self.unfold(a_out, b_out)
        return self.prob.loss(self.prob.error(a, core.float()[None], b))

    def plain_loss(self, core: torch.Tensor) -> float:
        from armor_export.prune.proxy import proxy_loss

        approx = core.float() / self.norm.row_scale[:, None] / self.norm.col_scale[None, :]
        return proxy_loss(approx, self.norm.w_bar, self.hdiag)

    def refit(self, a_out, core, b_out, iterations: int, tolerance: float = 1e-7):
        """A and B re-solved around the fixed ``core``; (a_out, b_out, loss, rounds)."""
        from armor_export.prune.armor import a_step, b_step

        a, b = self.unfold(a_out, b_out)
        s = core.float()[None]
        err = self.prob.error(a, s, b)
        best = self.prob.loss(err)
        best_ab, rounds = (a, b), 0
        for _ in range(iterations):
            a, err = a_step(self.prob, a, s, b, err)
            b, err = b_step(self.prob, a, s, b, err)
            loss = self.prob.loss(err)
            if not loss <= best:  # a NaN or a rise (cannot happen: both steps are monotone)
                break
            gain, best, best_ab, rounds = best - loss, loss, (a, b), rounds + 1
            if gain <= tolerance * max(best, 1e-30):
                break
        a_out, b_out = self.fold(*best_ab)
        return a_out, b_out, best, rounds


def quantize_matrix(
    name: str,
    weight: torch.Tensor,
    hdiag: torch.Tensor,
    core: torch.Tensor,
    a_blocks: torch.Tensor | None,
    b_blocks: torch.Tensor | None,
    channel_amax: torch.Tensor | None,
    settings: QuantSettings,
) -> MatrixQuant:
    """Quantize one pruned matrix (smoothing, weight quantization, re-fit), in float32."""
    spec = schemes.get(settings.scheme)
    start = time.perf_counter()
    armor = a_blocks is not None
    proxy = _Proxy(weight, hdiag, a_blocks.shape[-1] if armor else None)
    core = core.float()
    metrics: dict = {}
    if armor:
        a_blocks, b_blocks = a_blocks.float(), b_blocks.float()
        metrics["loss_pruned"] = proxy.armor_loss(a_blocks, core, b_blocks)
        if settings.alpha() is not None:
            sigma = smoothing_factors(channel_amax, core, settings.alpha())
            core = core * sigma[None, :]
            b_blocks = b_blocks / sigma.reshape(-1, b_blocks.shape[-1], 1)
            metrics["loss_smoothed"] = proxy.armor_loss(a_blocks, core, b_blocks)
    else:
        metrics["loss_pruned"] = proxy.plain_loss(core)
    scale = weight_scales(core, spec)
    values = quantize(core, scale[:, None], spec)
    dequant = values.float() * scale[:, None]
    if armor:
        metrics["loss_quantized"] = proxy.armor_loss(a_blocks, dequant, b_blocks)
        metrics["loss_refit"], metrics["refit_rounds"] = metrics["loss_quantized"], 0
        if settings.refit and settings.refit_iterations:
            a_new, b_new, loss, rounds = proxy.refit(
                a_blocks, dequant, b_blocks, settings.refit_iterations
            )
            if loss <= metrics["loss_quantized"]:
                a_blocks, b_blocks = a_new, b_new
                metrics["loss_refit"], metrics["refit_rounds"] = loss, rounds
    else:
        metrics["loss_quantized"] = proxy.plain_loss(dequant)
    metrics["seconds"] = time.perf_counter() - start
    if not all(_finite(v) for k, v in metrics.items() if k.startswith("loss")):
        raise UserError(f"{name}: quantization produced a non-finite proxy loss ({metrics})")
    return MatrixQuant(values, scale, a_blocks, b_blocks, metrics)


def _finite(x: float) -> bool:
    return x == x and abs(x) != float("inf")


# ---------------------------------------------------------------------------------------
# calibration passes over the pruned model


class _AmaxProbe(nn.Module):
    """Stands in for a core's QuantCore during calibration: records the per-channel maximum
    magnitude of the core's input and multiplies it by ``weight`` (float)."""

    def __init__(self, weight: torch.Tensor):
        super().__init__()
        self.weight = weight
        self.amax = torch.zeros(weight.shape[1], dtype=torch.float32)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cur = x.detach().abs().reshape(-1, x.shape[-1]).amax(0).float()
        torch.maximum(self.amax, cur, out=self.amax)
        return F.linear(x, self.weight.to(x.dtype))


@torch.no_grad()
def core_input_amax(
    model: nn.Module,
    names: list[str],
    batches: list[torch.Tensor],
    weights: Callable[[str, nn.Module], torch.Tensor] | None = None,
    progress: Callable[[], None] | None = None,
) -> dict[str, torch.Tensor]:
    """Per pruned matrix, the per-channel max |input of its 2:4 core| over ``batches`` (for
    ARMOR the core's input is ``B x``). ``weights(name, module)`` gives the core the pass
    runs with (default: the module's own float core)."""
    from armor_export.prune.linear import ArmorLinear

    probes: dict[str, _AmaxProbe] = {}
    saved: list[tuple[nn.Module, object]] = []
    handles = []
    try:
        for name in names:
            mod = model.get_submodule(name)
            if isinstance(mod, ArmorLinear):
                w = weights(name, mod) if weights else mod.core.detach()
                probes[name] = _AmaxProbe(w)
                saved.append((mod, mod.quant))
                mod.quant = probes[name]
            else:
                probe = _AmaxProbe(torch.zeros(0, mod.in_features))
                probes[name] = probe
                handles.append(mod.register_forward_pre_hook(_input_hook(probe)))
        # the decoder layers only: the LM head's logits (a 49k vocabulary for SmolLM2) would
        # cost more than the layers and feed no core
        body = model.get_decoder() if hasattr(model, "get_decoder") else model
        for batch in batches:
            body(input_ids=batch, use_cache=False)
            if progress:
                progress()
    finally:
        for mod, quant in saved:
            mod.quant = quant
        for h in handles:
            h.remove()
    return {name: p.amax for name, p in probes.items()}


def _input_hook(probe: _AmaxProbe):
    def hook(_mod, args):
        x = args[0].detach()
        cur = x.abs().reshape(-1, x.shape[-1]).amax(0).float()
        torch.maximum(probe.amax, cur, out=probe.amax)

    return hook


# ---------------------------------------------------------------------------------------
# the whole checkpoint


def settings_key(source_sha256: str, settings: QuantSettings, calibration: str) -> str:
    """The key of the per-matrix results and calibration passes: what decides them (which
    inputs stay in float decides only the activation scales written at the end)."""
    decides = asdict(settings)
    decides.pop("float_activations")
    decides["smoothing"] = settings.alpha()  # "auto" and its value are the same run
    data = {"source": source_sha256, "settings": decides, "calibration": calibration}
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


class _Store:
    """``<out>/work/quant``: one file per finished matrix and per calibration pass, each with
    the key of what it came from (a file with another key is stale and done again)."""

    def __init__(self, out: Path, key: str):
        self.dir, self.key = out / WORK, key

    def path(self, name: str) -> Path:
        return self.dir / f"{name}.safetensors"

    def get(self, name: str) -> tuple[dict[str, torch.Tensor], dict] | None:
        path = self.path(name)
        if not path.is_file():
            return None
        try:
            meta = read_metadata(path)
            if meta.get("key") != self.key:
                log.warning("%s was computed from other inputs; doing it again", path)
                return None
            return read_tensors(path), json.loads(meta.get("metrics", "{}"))
        except (CorruptFileError, ValueError) as exc:
            log.warning("%s is unreadable (%s); doing it again", path, exc)
            return None

    def put(self, name: str, tensors: dict[str, torch.Tensor], metrics: dict) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        meta = {"key": self.key, "metrics": json.dumps(metrics)}
        write_tensors(self.path(name), tensors, meta)


def _pack_quant(q: MatrixQuant) -> dict[str, torch.Tensor]:
    out = {"values": stored_bits(q.values), "weight_scale": q.weight_scale}
    if q.a_blocks is not None:
        out.update(a_blocks=q.a_blocks.contiguous(), b_blocks=q.b_blocks.contiguous())
    return out


def _unpack_quant(tensors: dict, metrics: dict, scheme: str) -> MatrixQuant:
    dtype = schemes.get(scheme).torch_dtype
    values = tensors["values"]
    values = values.view(dtype) if values.dtype != dtype else values
    return MatrixQuant(
        values,
        tensors["weight_scale"],
        tensors.get("a_blocks"),
        tensors.get("b_blocks"),
        metrics,
    )


def quantize_checkpoint(
    source: str | Path,
    out: str | Path,
    settings: QuantSettings,
    reporter: Reporter | None = None,
    dense_model: str | None = None,
) -> Path:
    """Write the 8-bit checkpoint of the pruned checkpoint ``source`` into ``out``.

    ``dense_model`` (default: the model the checkpoint was pruned from, per its manifest)
    gives the dense weights and calibration statistics the proxy loss is measured against.
    """
    from armor_export.prune.checkpoint import (
        MANIFEST,
        WEIGHTS,
        load_checkpoint,
        read_checkpoint_manifest,
        save_quantized_checkpoint,
    )

    settings.validate()
    reporter = reporter or NullReporter()
    source, out = Path(source), Path(out)
    manifest = read_checkpoint_manifest(source)
    if manifest.get("quant"):
        raise UserError(
            f"{source} is already quantized ({manifest['quant'].get('scheme')}): quantize the "
            "pruned checkpoint it came from"
        )
    source_sha = manifest.get("sha256", {}).get(WEIGHTS, "")
    model, _ = load_checkpoint(source, torch.float32)  # checks the weights' sha256 first
    names = list(manifest["matrices"])
    prune_cfg = _prune_config(manifest)
    if dense_model:
        prune_cfg.model = dense_model
    dense, tokenizer = _load_dense(prune_cfg.model, source)
    from armor_export.prune.api import calibration_batches

    batches = calibration_batches(tokenizer, prune_cfg, model.config)
    from armor_export.prune.provenance import tensor_digest

    key = settings_key(source_sha, settings, tensor_digest(*batches))
    store = _Store(out, key)
    hdiags = _dense_hdiag(dense, prune_cfg, batches, names, source, out, reporter)

    def calibrated(key: str, what: str) -> dict[str, torch.Tensor]:
        """Per core, the per-channel max |input| over the calibration set (stored once)."""
        done = store.get(key)
        if done is not None:
            return done[0]
        with reporter.task(f"quantize: calibration ({what})", len(batches)) as task:
            amax = core_input_amax(model, names, batches, progress=lambda: task.advance(1))
        store.put(key, amax, {})
        return amax

    # pass 1: per-channel maxima of each core's float input (for smoothing only)
    amax1 = calibrated("_pass1", "float cores") if settings.alpha() is not None else {}

    results: dict[str, MatrixQuant] = {}
    with reporter.task(f"quantize: {schemes.get(settings.scheme).title} cores", len(names)) as task:
        for name in names:
            done = store.get(name)
            if done is not None:
                results[name] = _unpack_quant(*done, settings.scheme)
            else:
                mod = model.get_submodule(name)
                core, a, b = _factors(mod)
                weight = dense.get_submodule(name).weight.detach()
                channel_amax = amax1.get(name)
                q = quantize_matrix(name, weight, hdiags[name], core, a, b, channel_amax, settings)
                store.put(name, _pack_quant(q), q.metrics)
                results[name] = q
            task.advance(1)
    del dense

    # pass 2: per-tensor activation maxima with the quantized weights (and smoothed B)
    _apply_weights(model, results)
    amax2 = calibrated("_pass2", "8-bit cores")
    spec = schemes.get(settings.scheme)
    act_scales = {
        name: None
        if settings.weight_only(name)
        else activation_scale(float(amax2[name].max()), spec)
        for name in names
    }
    for name in names:
        results[name].metrics["activations"] = "float" if act_scales[name] is None else spec.name
    own = ("sha256", "matrices", "format", "format_version", "versions")
    extra = {k: v for k, v in manifest.items() if k not in own}
    extra["quant"] = {
        "scheme": spec.name,
        "weights": "per-channel",
        "activations": "per-tensor",
        **asdict(settings),
        "smoothing": settings.alpha(),
        "float_activations": list(
            schemes.get(spec.name).float_activations
            if settings.float_activations is None
            else settings.float_activations
        ),
        "weight_only": sorted(n for n in names if act_scales[n] is None),
        "source": {"checkpoint": str(source), "sha256": source_sha},
    }
    save_quantized_checkpoint(out, model, tokenizer, manifest, results, act_scales, extra)
    log.info("wrote %s (%s)", out / MANIFEST, spec.title)
    return out


def _factors(mod: nn.Module):
    from armor_export.prune.linear import ArmorLinear

    if isinstance(mod, ArmorLinear):
        core = (mod.core * mod.mask).detach()
        return core, mod.a_blocks.detach(), mod.b_blocks.detach()
    return mod.weight.detach(), None, None


def _apply_weights(model: nn.Module, results: dict[str, MatrixQuant]) -> None:
    """The model with each core's dequantized weight (and re-fitted wrappers), float
    activations: what the activation calibration runs on."""
    from armor_export.prune.linear import ArmorLinear

    with torch.no_grad():
        for name, q in results.items():
            mod = model.get_submodule(name)
            dequant = q.values.float() * q.weight_scale[:, None]
            if isinstance(mod, ArmorLinear):
                mod.core.copy_(dequant)
                mod.a_blocks.copy_(q.a_blocks)
                mod.b_blocks.copy_(q.b_blocks)
            else:
                mod.weight.copy_(dequant)


def _prune_config(manifest: dict):
    from armor_export.config import PruneConfig

    data = manifest.get("prune_config")
    if not isinstance(data, dict):
        raise CorruptFileError("the checkpoint's manifest records no prune_config")
    return PruneConfig.from_dict(data)


def _load_dense(model: str, source: Path):
    from armor_export.data.models import load_model_and_tokenizer

    try:
        dense, tokenizer = load_model_and_tokenizer(model)
    except UserError as exc:
        raise UserError(
            f"the dense model {model!r} that {source} was pruned from is needed for the "
            f"proxy loss and cannot be loaded ({exc}); pass --dense-model PATH"
        ) from None
    dense.eval()
    return dense, tokenizer


def _dense_hdiag(dense, prune_cfg, batches, names, source: Path, out: Path, reporter):
    """The dense calibration statistics the prune used: its cached file when it matches
    (keyed on the model content and calibration tokens), else computed again into ``out``."""
    from armor_export.models.registry import adapter_for
    from armor_export.prune import provenance
    from armor_export.prune.api import _calibrate_with_progress

    model_key = provenance.model_source(prune_cfg.model)["sha256"]
    key = provenance.statistics_key(model_key, batches, False)
    for path in (source / "work" / "stats.safetensors", out / WORK / "stats.safetensors"):
        if path.is_file():
            try:
                if read_metadata(path).get("key") == key:
                    stats = read_tensors(path)
                    if all(f"{n}.hdiag" in stats for n in names):
                        return {n: stats[f"{n}.hdiag"] for n in names}
            except CorruptFileError:
                pass
    adapter = adapter_for(dense)
    targets = {n: dense.get_submodule(n) for n in names}
    collected: dict[str, torch.Tensor] = {}

    def on_layer(_i, layer_stats):
        for name, st in layer_stats.items():
            collected[f"{name}.hdiag"] = st.hdiag(name)

    with torch.no_grad():
        _calibrate_with_progress(
            reporter, "quantize: dense statistics", dense, adapter, batches, targets, on_layer
        )
    (out / WORK).mkdir(parents=True, exist_ok=True)
    write_tensors(out / WORK / "stats.safetensors", collected, {"key": key})
    return {n: collected[f"{n}.hdiag"] for n in names}


def summary_line(checkpoint: str | Path) -> str:
    """One line on a quantized checkpoint: scheme, cores, mean proxy loss at each step."""
    from armor_export.prune.checkpoint import read_checkpoint_manifest

    manifest = read_checkpoint_manifest(Path(checkpoint))
    quant = [m["quant"] for m in manifest["matrices"].values() if "quant" in m]
    scheme = schemes.get(manifest["quant"]["scheme"]).title

    def mean(key: str) -> float:
        return sum(q.get(key, q["loss_quantized"]) for q in quant) / max(len(quant), 1)

    line = f"{len(quant)} cores {scheme}: mean proxy loss {mean('loss_pruned'):.4g} pruned"
    line += f" -> {mean('loss_quantized'):.4g} quantized"
    if any("loss_refit" in q for q in quant):
        line += f" -> {mean('loss_refit'):.4g} re-fitted"
    return line
