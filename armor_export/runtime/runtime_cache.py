"""TensorRT-RTX's runtime cache of an engine, kept on disk between runs.

TensorRT-RTX compiles some of an engine's kernels just in time, on the GPU it runs on, for the
shapes it meets; its runtime cache (``IRuntimeConfig.create_runtime_cache``) holds what was
compiled, and a serialised one loaded into the next process spares it the compiling.
``TensorRTSession`` loads the file when it opens an engine and writes it back when it closes
(or at interpreter exit) if the cache grew. Datacenter TensorRT has no runtime cache: there
nothing is read or written.

The file lives in the user's cache folder, not beside the engine (an engine folder is what is
shipped and may be read-only, and the cache is only good for this GPU, driver and version):
``$ARMOR_EXPORT_RUNTIME_CACHE``, else ``$XDG_CACHE_HOME/armor-export/runtime-cache``, else
``~/.cache/armor-export/runtime-cache``; ``ARMOR_EXPORT_RUNTIME_CACHE=off`` turns it off. The
name is the engine's sha256 and the backend's version, so a copied or moved engine finds its
cache and a rebuilt one never takes another's. TensorRT-RTX checks a blob against the GPU,
driver and version before it loads it and refuses one of another machine: then the session
runs without it and writes its own. Writes are atomic (a temporary file, then a rename); a
cache that cannot be read or written is a warning, never an error.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)

ENV = "ARMOR_EXPORT_RUNTIME_CACHE"
OFF = "off"
SUFFIX = ".runtime-cache"


def cache_folder(environ: dict[str, str] | None = None) -> Path | None:
    """The folder runtime caches are kept in, or None when turned off."""
    environ = os.environ if environ is None else environ
    chosen = environ.get(ENV, "")
    if chosen.lower() == OFF:
        return None
    if chosen:
        return Path(chosen).expanduser()
    base = environ.get("XDG_CACHE_HOME") or str(Path(environ.get("HOME") or "~") / ".cache")
    return Path(base).expanduser() / "armor-export" / "runtime-cache"


def cache_path(engine: bytes, backend_version: str, folder: Path, sha256: str = "") -> Path:
    """The runtime cache file of the engine whose bytes are ``engine``: keyed on its content
    (sha256; ``sha256`` where the caller has already checked it) and the backend's version,
    never on where the engine lies."""
    digest = sha256 or hashlib.sha256(engine).hexdigest()
    return Path(folder) / f"{digest}.{backend_version}{SUFFIX}"


def read_blob(path: Path) -> bytes | None:
    """The saved cache, or None (none yet, or unreadable: a warning)."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        log.warning("TensorRT-RTX runtime cache %s not read (%s): running without it", path, exc)
        return None


def write_blob(path: Path, blob: bytes) -> bool:
    """Write ``blob`` to ``path`` atomically; False (and a warning) where it cannot be."""
    from armor_export.errors import OutputError
    from armor_export.io import write_bytes

    try:
        write_bytes(path, blob)
    except (OSError, OutputError) as exc:
        log.warning("TensorRT-RTX runtime cache not saved: %s", str(exc).splitlines()[0])
        return False
    return True


class RuntimeCache:
    """One engine's runtime cache: the TensorRT-RTX objects and the file they are saved to.

    ``attach(trt, engine, engine_bytes, sha256)`` makes the runtime config that execution
    contexts are created from (``config``), with the saved cache loaded where there is one;
    None where the backend has no runtime cache (datacenter TensorRT) or it is turned off.
    ``sha256``: the engine's, where the caller has checked it against its build report (else
    hashed here)."""

    def __init__(self, config, cache, path: Path, loaded: bytes | None) -> None:
        self.config, self.cache, self.path = config, cache, path
        self.loaded = loaded  # the blob read from the file and accepted, or None
        self._saved_digest = hashlib.sha256(loaded).digest() if loaded else b""

    @classmethod
    def attach(cls, trt, engine, engine_bytes: bytes, sha256: str = "") -> RuntimeCache | None:
        folder = cache_folder()
        if folder is None or not hasattr(engine, "create_runtime_config"):
            return None
        config = engine.create_runtime_config()
        if config is None or not hasattr(config, "create_runtime_cache"):
            return None  # a TensorRT whose runtime config has no runtime cache
        cache = config.create_runtime_cache()
        if cache is None:
            return None
        path = cache_path(engine_bytes, trt.__version__, folder, sha256)
        blob = read_blob(path)
        if blob is not None and not cache.deserialize(blob):
            log.warning(
                "TensorRT-RTX runtime cache %s is for another GPU, driver or version (or "
                "damaged): running without it, and saving this one over it",
                path,
            )
            blob = None
        config.set_runtime_cache(cache)
        return cls(config, cache, path, blob)

    def save(self) -> bool:
        """Write the cache to its file if it holds more than what was read or last saved."""
        memory = self.cache.serialize()
        if memory is None:
            return False
        blob = bytes(memory)
        digest = hashlib.sha256(blob).digest()
        if not blob or digest == self._saved_digest:
            return False
        if write_blob(self.path, blob):
            self._saved_digest = digest
            return True
        return False
