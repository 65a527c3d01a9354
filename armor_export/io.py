"""Atomic file writes and safe safetensors/JSON reading (never pickle).

Importing this module does not import torch: the torch-free runtime uses the JSON helpers.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from armor_export.errors import CorruptFileError, OutputError

if TYPE_CHECKING:
    import torch


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# errno -> (what happened, what to do) of the OSErrors a user fixes; any other OSError (an
# ENOENT of our own temporary file, say) is a bug and keeps its traceback
_SPACE = "free some space, or choose another output folder"
_FIXABLE = {
    errno.ENOSPC: ("no space left on device writing", _SPACE),
    errno.EDQUOT: ("disk quota exceeded writing", _SPACE),
    errno.EFBIG: ("file too large (a file size limit: the file system's, or ulimit -f) writing",
                  "raise the limit, or choose another output folder"),
    errno.EROFS: ("read-only file system writing", "choose a writable output folder"),
    errno.EACCES: ("permission denied:", "check its permissions, or choose another path"),
    errno.EPERM: ("operation not permitted:", "check its permissions and attributes "
                  "(lsattr), or choose another path"),
    errno.EISDIR: ("a folder where a file is needed:", "give a file path"),
}  # fmt: skip


def user_os_error(exc: OSError, path: str | Path | None = None) -> OutputError | None:
    """The one-line error for an OSError the user can fix (a full disk, a read-only folder,
    no permission, a file where a folder is needed), naming ``path`` (else the file the error
    names); None for any other OSError, which is a bug and stays a traceback."""
    where = path if path is not None else exc.filename
    if exc.errno in (errno.ENOTDIR, errno.EEXIST):  # mkdir of a path that is, or is in, a file
        blocker = _file_in_the_way(Path(where)) if where is not None else None
        if blocker is None:  # EEXIST of a folder, or of our own temporary name: a bug
            return None if exc.errno == errno.EEXIST else OutputError(
                f"a file is in the way of a folder: {exc}; choose another path")  # fmt: skip
        if Path(blocker) == Path(where):
            return OutputError(f"{where} is a file, not a folder: give a folder path")
        return OutputError(
            f"{blocker} is a file, not a folder, so {where} cannot be written: remove it or "
            "choose another path"
        )
    if exc.errno not in _FIXABLE:
        return None
    what, advice = _FIXABLE[exc.errno]
    if where is None:  # a failed write() names no file
        return OutputError(f"{what.removesuffix(' writing').rstrip(':')}: {advice}")
    return OutputError(f"{what} {where}: {advice}")


def _file_in_the_way(path: Path) -> Path | None:
    """The first of ``path`` and its parents that exists and is not a folder."""
    for candidate in (path, *path.parents):
        if candidate.exists() and not candidate.is_dir():
            return candidate
    return None


@contextlib.contextmanager
def writing(path: str | Path, folder: bool = False) -> Iterator[None]:
    """Turn an OSError the user can fix while ``path`` is written into an
    :class:`OutputError` naming ``path``; any other OSError passes unchanged. With ``folder``
    (``path`` is the folder a whole verb writes into), a file the error names is named
    instead, and ``path`` only when it names none (a failed ``write()``)."""
    try:
        yield
    except OSError as exc:
        error = user_os_error(exc, (exc.filename or path) if folder else path)
        if error is None:
            raise
        raise error from exc


def _atomic(path: Path, write) -> None:
    """Write through a temporary file in the same folder, then rename over ``path``. A full
    disk, a read-only folder and the like are an :class:`OutputError` naming ``path``."""
    with writing(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual permissions
        try:
            write(tmp)
            with open(tmp, "rb+") as fh:
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file, read in 4 MiB chunks (exports and engines are large)."""
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_json(path: str | Path, data: Any) -> None:
    def write(tmp: str) -> None:
        Path(tmp).write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")

    _atomic(Path(path), write)


def write_text(path: str | Path, text: str) -> None:
    _atomic(Path(path), lambda tmp: Path(tmp).write_text(text))


def write_bytes(path: str | Path, data: bytes) -> None:
    _atomic(Path(path), lambda tmp: Path(tmp).write_bytes(data))


def atomic_path(path: str | Path, write) -> None:
    """Let ``write(tmp_path)`` produce the file, then move it over ``path`` atomically."""
    _atomic(Path(path), write)


def read_json(path: str | Path) -> Any:
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise CorruptFileError(f"missing file: {path}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CorruptFileError(f"{path}: not valid JSON ({exc})") from None


def write_tensors(
    path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None
) -> None:
    from safetensors import SafetensorError
    from safetensors.torch import save_file

    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}

    def write(tmp: str) -> None:
        try:
            save_file(tensors, tmp, metadata=metadata)
        except SafetensorError as exc:  # its Rust writer reports I/O errors as text
            code = re.search(r"\(os error (\d+)\)", str(exc))
            if code is None:
                raise
            raise OSError(int(code[1]), os.strerror(int(code[1])), tmp) from exc

    _atomic(Path(path), write)


def read_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise CorruptFileError(f"missing file: {path}")
    try:
        return load_file(path)
    except (SafetensorError, OSError, ValueError) as exc:
        raise CorruptFileError(f"{path}: corrupt safetensors file ({exc})") from None


def read_metadata(path: str | Path) -> dict[str, str]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), "pt") as fh:
            return fh.metadata() or {}
    except (SafetensorError, OSError, ValueError) as exc:
        raise CorruptFileError(f"{path}: corrupt safetensors file ({exc})") from None
