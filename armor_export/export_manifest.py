"""The export manifest (``export_manifest.json``) as typed data.

It is the contract between the exporter and everything that consumes an export: the
engine build, parity verification and the torch-free runtime. This module imports neither
torch nor onnx nor the exporter. It sits beside ``io.py`` rather than inside
``armor_export/export/`` because importing any module of that package first runs the
package's ``__init__``, i.e. the exporter verb; the runtime must not load it.

The graph's names follow one convention, defined here and used by the exporter's wrapper
to trace the graph: token inputs ``input_ids`` / ``attention_mask`` / ``position_ids``,
per decoder layer ``past_key_values.{i}.{key,value}`` in and ``present.{i}.{key,value}``
out (a step's presents are the next step's pasts), and ``logits`` out.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from armor_export.errors import CorruptFileError

MANIFEST = "export_manifest.json"
ONNX_FILE = "model.onnx"
EXTERNAL_DATA_FILE = ONNX_FILE + ".data"
TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"  # what ONNX Runtime GenAI's tokenizer reads
GENAI_CONFIG_FILE = "genai_config.json"  # loads the folder in ONNX Runtime GenAI
SELF_DIGEST = "manifest_sha256"  # the manifest's own hash, kept in it (``seal``)
FORMAT = "armor-export-onnx"
FORMAT_VERSION = 1

TOKEN_INPUTS = ("input_ids", "attention_mask", "position_ids")  # int64 [batch, seq | total]
LOGITS = "logits"
KV = ("key", "value")


def manifest_digest(data: dict) -> str:
    """The sha256 of a manifest's JSON form without its own digest (keys sorted, compact):
    the same for any spelling of the same JSON."""
    body = {key: value for key, value in data.items() if key != SELF_DIGEST}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def seal(data: dict) -> dict:
    """``data`` (a manifest's JSON form) with its ``manifest_sha256`` recomputed: what the
    exporter writes, and what a tool that changes an export on purpose must write back."""
    return {
        **{k: v for k, v in data.items() if k != SELF_DIGEST},
        SELF_DIGEST: manifest_digest(data),
    }


def past_name(layer: int, kv: str) -> str:
    return f"past_key_values.{layer}.{kv}"


def present_name(layer: int, kv: str) -> str:
    return f"present.{layer}.{kv}"


@dataclass(frozen=True)
class LayerCache:
    """One decoder layer's KV-cache tensors: the pasts it reads, the presents it writes."""

    layer: int
    past_key: str
    past_value: str
    present_key: str
    present_value: str

    @classmethod
    def of_layer(cls, layer: int) -> LayerCache:
        key, value = KV
        return cls(
            layer,
            past_name(layer, key),
            past_name(layer, value),
            present_name(layer, key),
            present_name(layer, value),
        )

    @property
    def pasts(self) -> tuple[str, str]:
        return (self.past_key, self.past_value)

    @property
    def presents(self) -> tuple[str, str]:
        return (self.present_key, self.present_value)

    def feedback(self) -> tuple[tuple[str, str], tuple[str, str]]:
        """(past input, present output) pairs: what the next step reads from this one."""
        return ((self.past_key, self.present_key), (self.past_value, self.present_value))


@dataclass(frozen=True)
class DecoderSpec:
    """What a runtime needs to know to drive the graph (``decoder`` in the manifest)."""

    num_layers: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    hidden_size: int
    num_attention_heads: int | None = None  # None: an export older than the record

    @classmethod
    def from_config(cls, config) -> DecoderSpec:
        """From a Hugging Face model config (any object with its attribute names)."""
        heads = config.num_attention_heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
        return cls(
            num_layers=config.num_hidden_layers,
            num_kv_heads=getattr(config, "num_key_value_heads", None) or heads,
            head_dim=head_dim,
            vocab_size=config.vocab_size,
            hidden_size=config.hidden_size,
            num_attention_heads=heads,
        )

    def to_dict(self) -> dict[str, int]:
        """The JSON form; an older export's unrecorded head count is written back absent."""
        return {k: v for k, v in asdict(self).items() if v is not None}

    def cache(self) -> list[LayerCache]:
        return [LayerCache.of_layer(layer) for layer in range(self.num_layers)]

    def past_names(self) -> list[str]:
        return [name for layer in self.cache() for name in layer.pasts]

    def present_names(self) -> list[str]:
        return [name for layer in self.cache() for name in layer.presents]

    def input_names(self) -> list[str]:
        """The graph's inputs in signature order (the exporter traces them in this order)."""
        return [*TOKEN_INPUTS, *self.past_names()]

    def output_names(self) -> list[str]:
        return [LOGITS, *self.present_names()]

    def past_shape(self, batch: int | None, length: int | None) -> tuple[int | None, ...]:
        """``[batch, kv_heads, length, head_dim]``: one past/present tensor (None: dynamic)."""
        return (batch, self.num_kv_heads, length, self.head_dim)


@dataclass(frozen=True)
class Limits:
    """The largest batch, prompt and context the export was made (and checked) for."""

    max_batch: int
    max_prompt: int
    max_context: int

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


@dataclass(frozen=True)
class Tokens:
    """Special token ids; the runtime stops at any of ``eos_token_ids`` and pads with pad."""

    eos_token_ids: tuple[int, ...]
    bos_token_id: int | None
    pad_token_id: int | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "eos_token_ids": list(self.eos_token_ids),
            "bos_token_id": self.bos_token_id,
            "pad_token_id": self.pad_token_id,
        }


@dataclass(frozen=True)
class PluginInfo:
    """The TensorRT plugin node of a plugin-lowered export (what the engine build loads)."""

    name: str
    domain: str
    version: str
    namespace: str

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


@dataclass(frozen=True)
class Source:
    """What was exported: a model name or path, and for a pruned checkpoint how it was pruned.

    ``model`` is the name or path as the export was given it (a record: relative to the folder
    the command ran in). ``folder`` is where a local model folder is, relative to the export
    folder (``../checkpoint`` for a build's export), so a copied build folder still finds its
    model from any working folder; None for a hub id, or an export older than the record.
    """

    model: str
    pruned: bool
    method: str | None = None
    block_sizes: tuple[int, ...] = ()
    folder: str | None = None

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"model": self.model, "pruned": self.pruned}
        if self.folder is not None:
            data["folder"] = self.folder
        if self.pruned:  # only a pruned checkpoint records how it was pruned
            data["method"] = self.method
            data["block_sizes"] = list(self.block_sizes)
        return data

    def locate(self, export_dir: str | Path) -> str:
        """The model to load for the export in ``export_dir``: its local folder, found relative
        to the export folder wherever that now is, else the name (a hub id); a one-line
        UserError naming ``--model`` when the folder did not travel with the export."""
        from armor_export.errors import UserError

        if self.folder is None:
            return self.model
        path = Path(export_dir) / self.folder
        if not path.is_dir():
            raise UserError(
                f"the export's source model ({self.model}) is not at {path}, where it was "
                "beside the export: pass its folder with --model"
            )
        return str(path)


@dataclass(frozen=True)
class ExportManifest:
    """A finished export: its files, graph signature, limits and provenance.

    ``input_names`` / ``output_names`` are the graph's signature as the exporter recorded it
    (a loaded graph is checked against them); the typed views of it (``token_inputs``,
    ``cache``, ``past_names``, ``present_names``, ``logits``) follow from ``decoder`` by the
    naming convention of this module, never from positions in those lists.
    """

    versions: dict[str, str]
    config: dict[str, Any]  # the ExportConfig, as written (kept as data: older keys load)
    source: Source
    family: str
    dtype: str
    lowering: str
    decoder: DecoderSpec
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]
    limits: Limits
    tokens: Tokens
    counts: dict[str, Any]
    sha256: dict[str, str]  # file name -> hex digest
    plugin: PluginInfo | None = None
    onnx: str = ONNX_FILE
    external_data: str | None = None
    tokenizer: str = TOKENIZER_FILE
    tokenizer_config: str | None = None  # None: an export older than the record
    genai_config: str | None = None  # None: older, or a graph ONNX Runtime cannot run
    graph_revision: int | None = None  # None: an export older than the record (revision < 3)
    attention: str | None = None  # None: an export older than the record (revision < 4)
    # an 8-bit export's Q/DQ form (``{"scheme", "weights", "activations", "wrappers"}``,
    # docs/quant.md); None: a float export
    quant: dict[str, Any] | None = None
    format_version: int = FORMAT_VERSION
    extra: dict[str, Any] = field(default_factory=dict)  # unknown keys, written back as read
    # the digest of the rest as read (``seal``); None: an export older than the record
    manifest_sha256: str | None = None

    # ------------------------------------------------------------ the graph signature

    @property
    def token_inputs(self) -> tuple[str, ...]:
        return TOKEN_INPUTS

    @property
    def logits(self) -> str:
        return LOGITS

    @property
    def cache(self) -> list[LayerCache]:
        return self.decoder.cache()

    @property
    def past_names(self) -> list[str]:
        return self.decoder.past_names()

    @property
    def present_names(self) -> list[str]:
        return self.decoder.present_names()

    def cache_feedback(self) -> list[tuple[str, str]]:
        """(past input, present output) name pairs of every layer, keys before values."""
        return [pair for layer in self.cache for pair in layer.feedback()]

    @property
    def files(self) -> list[str]:
        """The files the export consists of besides the manifest, in the order checked."""
        optional = (self.external_data, self.tokenizer_config, self.genai_config)
        return [self.onnx, self.tokenizer] + [name for name in optional if name]

    # ------------------------------------------------------------ reading and writing

    @classmethod
    def read(cls, folder: str | Path) -> ExportManifest:
        """The manifest of a finished export, or a one-line CorruptFileError saying why not.

        Every file it lists must exist and still have the sha256 recorded at export, so a
        damaged or edited graph is never used (the check reads about a GB a second), and the
        manifest itself must still match the digest it was written with (``seal``): limits
        or tokens edited by hand are refused, not trusted.
        """
        from armor_export.io import read_json, sha256_file

        folder = Path(folder)
        if not folder.is_dir():
            raise CorruptFileError(f"{folder}: no such export folder")
        path = folder / MANIFEST
        if not path.is_file():
            raise CorruptFileError(
                f"{folder}: no {MANIFEST} (not an export, or the export did not finish; "
                "run armor-export export again)"
            )
        data = read_json(path)
        manifest = cls.from_dict(data, where=path)
        if manifest.manifest_sha256 is not None and manifest.manifest_sha256 != manifest_digest(
            data
        ):
            raise CorruptFileError(
                f"{path} is not the manifest this export wrote (its content no longer matches "
                f"its {SELF_DIGEST}): it was edited or damaged; export again"
            )
        for name in manifest.files:
            if not (folder / name).is_file():
                raise CorruptFileError(f"{folder}: missing file {name} listed in {MANIFEST}")
        for name, digest in manifest.sha256.items():
            if (folder / name).is_file() and sha256_file(folder / name) != digest:
                raise CorruptFileError(
                    f"{folder / name} is not the file this export wrote (its sha256 differs "
                    f"from {MANIFEST}): it was changed or damaged; export again"
                )
        return manifest

    @classmethod
    def from_dict(cls, data: Any, where: str | Path = MANIFEST) -> ExportManifest:
        """Parse the JSON form; ``where`` names the file in error messages."""
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise CorruptFileError(f"{where}: not an armor-export ONNX manifest")
        if data.get("format_version") != FORMAT_VERSION:
            raise CorruptFileError(
                f"{where}: format version {data.get('format_version')} "
                f"(this armor-export reads {FORMAT_VERSION})"
            )
        try:
            return cls._parse(data)
        except KeyError as exc:
            raise CorruptFileError(
                f"{where}: no {exc.args[0]!r} field (the export is damaged): export again"
            ) from None
        except (TypeError, ValueError, AttributeError) as exc:
            raise CorruptFileError(
                f"{where}: malformed manifest ({exc}) (the export is damaged): export again"
            ) from None

    @classmethod
    def _parse(cls, data: dict) -> ExportManifest:
        source, tokens, plugin = data["source"], data["tokens"], data["plugin"]
        return cls(
            versions=dict(data["versions"]),
            config=data["config"],
            source=Source(
                model=source["model"],
                pruned=bool(source["pruned"]),
                method=source.get("method"),
                block_sizes=tuple(source.get("block_sizes", ())),
                folder=source.get("folder"),
            ),
            family=data["family"],
            dtype=data["dtype"],
            lowering=data["lowering"],
            decoder=DecoderSpec(**data["decoder"]),
            input_names=tuple(data["input_names"]),
            output_names=tuple(data["output_names"]),
            limits=Limits(**data["limits"]),
            tokens=Tokens(
                eos_token_ids=tuple(tokens["eos_token_ids"]),
                bos_token_id=tokens["bos_token_id"],
                pad_token_id=tokens["pad_token_id"],
            ),
            counts=dict(data["counts"]),
            sha256=dict(data["sha256"]),
            plugin=PluginInfo(**plugin) if plugin is not None else None,
            onnx=data["onnx"],
            external_data=data["external_data"],
            tokenizer=data["tokenizer"],
            tokenizer_config=data.get("tokenizer_config"),
            genai_config=data.get("genai_config"),
            graph_revision=data.get("graph_revision"),
            attention=data.get("attention"),
            quant=dict(data["quant"]) if data.get("quant") is not None else None,
            format_version=data["format_version"],
            extra={k: v for k, v in data.items() if k not in _KEYS},
            manifest_sha256=data.get(SELF_DIGEST),
        )

    def to_dict(self) -> dict[str, Any]:
        """The JSON form, keys in the order the exporter has always written them."""
        data: dict[str, Any] = {
            "format": FORMAT,
            "format_version": self.format_version,
            "versions": dict(self.versions),
            "config": self.config,
            "source": self.source.to_dict(),
            "family": self.family,
            "onnx": self.onnx,
            "external_data": self.external_data,
            "tokenizer": self.tokenizer,
            "dtype": self.dtype,
            "lowering": self.lowering,
        }
        # older exports recorded none of these: they are written back without them
        for name in ("tokenizer_config", "genai_config"):
            if getattr(self, name) is not None:
                data[name] = getattr(self, name)
        if self.graph_revision is not None:
            data["graph_revision"] = self.graph_revision
        if self.attention is not None:
            data["attention"] = self.attention
        if self.quant is not None:  # float exports have no key (contract of #26)
            data["quant"] = dict(self.quant)
        data.update(
            {
                "plugin": self.plugin.to_dict() if self.plugin is not None else None,
                "decoder": self.decoder.to_dict(),
                "input_names": list(self.input_names),
                "output_names": list(self.output_names),
                "limits": self.limits.to_dict(),
                "tokens": self.tokens.to_dict(),
                "counts": dict(self.counts),
                "sha256": dict(self.sha256),
            }
        )
        data.update(self.extra)
        if self.manifest_sha256 is not None:
            data[SELF_DIGEST] = self.manifest_sha256
        return data

    def sealed(self) -> ExportManifest:
        """This manifest with the digest of its current content (what the exporter writes)."""
        return replace(self, manifest_sha256=manifest_digest(self.to_dict()))


# every key of the JSON form (anything else is kept in ``extra``)
_KEYS = frozenset(
    (
        "format format_version versions config source family onnx external_data tokenizer "
        "tokenizer_config genai_config "
        "dtype lowering graph_revision attention quant plugin decoder input_names output_names "
        "limits tokens counts sha256 manifest_sha256"
    ).split()
)
