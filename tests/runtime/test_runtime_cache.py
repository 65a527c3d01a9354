"""Where TensorRT-RTX's runtime cache of an engine is kept: a file in the user's cache folder
named by the engine's content and the backend's version, written atomically, and never an
error when it cannot be read or written. That a real engine writes and reuses it needs a
GPU: tests/gpu/test_gpu_runtime.py."""

from __future__ import annotations

import logging
import os

import pytest

from armor_export.runtime import runtime_cache as rc


def test_the_cache_folder_follows_the_environment(tmp_path):
    assert rc.cache_folder({rc.ENV: str(tmp_path / "c")}) == tmp_path / "c"
    assert rc.cache_folder({rc.ENV: "off"}) is None and rc.cache_folder({rc.ENV: "OFF"}) is None
    xdg = rc.cache_folder({"XDG_CACHE_HOME": str(tmp_path)})
    assert xdg == tmp_path / "armor-export" / "runtime-cache"
    home = rc.cache_folder({"HOME": str(tmp_path / "home")})
    assert home == tmp_path / "home" / ".cache" / "armor-export" / "runtime-cache"


def test_the_file_is_keyed_on_the_engines_content_and_version(tmp_path):
    one = rc.cache_path(b"engine one", "1.7.1", tmp_path)
    assert one == rc.cache_path(bytes(bytearray(b"engine one")), "1.7.1", tmp_path)
    assert one.parent == tmp_path and one.name.endswith(".1.7.1" + rc.SUFFIX)
    assert one != rc.cache_path(b"engine two", "1.7.1", tmp_path)  # a rebuilt engine
    assert one != rc.cache_path(b"engine one", "1.8.0", tmp_path)  # another TensorRT-RTX
    assert len(one.name.split(".")[0]) == 64  # the sha256, hex


def test_a_cache_is_written_whole_and_read_back(tmp_path):
    path = tmp_path / "deep" / "x.runtime-cache"
    assert rc.read_blob(path) is None  # none yet
    assert rc.write_blob(path, b"first")
    assert rc.write_blob(path, b"second, longer")
    assert rc.read_blob(path) == b"second, longer"
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]  # no temporary left


@pytest.mark.fault(
    "runtime",
    "the TensorRT-RTX runtime cache folder cannot be written (read-only, or a file in the way)",
    "a warning naming the cache; the engine runs without saving it",
)
def test_a_cache_that_cannot_be_written_is_a_warning(tmp_path, caplog):
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where the cache folder should be")
    with caplog.at_level(logging.WARNING, logger=rc.__name__):
        assert rc.write_blob(blocker / "x.runtime-cache", b"blob") is False
    assert "runtime cache not saved" in caplog.text
    if os.geteuid() != 0:  # root writes anywhere
        folder = tmp_path / "ro"
        folder.mkdir()
        folder.chmod(0o500)
        try:
            assert rc.write_blob(folder / "x.runtime-cache", b"blob") is False
        finally:
            folder.chmod(0o700)
