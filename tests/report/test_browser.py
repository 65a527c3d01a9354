"""report.html in a real headless browser (Debian's Chromium): the DOM holds every
section, and the embedded figures decode and paint (checked on a screenshot, with a copy
whose image data is broken as the negative control)."""

import base64
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest

from armor_export.eval.api import EvalResult, record_result
from armor_export.report import write_report
from tests.report.test_report import verify_report

CHROMIUM = shutil.which("chromium")
WINDOW = (1200, 2400)
SECTIONS = [
    "Run",
    "Proxy loss curves",
    "Final proxy loss",
    "Perplexity",
    "Wrapper overhead",
    "Parity",
]

pytestmark = [
    pytest.mark.skipif(
        CHROMIUM is None, reason="chromium not installed (apt-get install chromium)"
    ),
    pytest.mark.usefixtures("one_torch_thread"),
]


def chromium(page: Path, profile: Path, *args: str) -> subprocess.CompletedProcess:
    """Headless Chromium on ``page``; fails the test on a non-zero exit or a hang."""
    cmd = [
        CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
        "--no-first-run", f"--user-data-dir={profile}",
        f"--window-size={WINDOW[0]},{WINDOW[1]}", *args, page.resolve().as_uri(),
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc


class _Dom(HTMLParser):
    """Headings, table cells and image sources of a dumped DOM."""

    def __init__(self):
        super().__init__()
        self.headings, self.cells, self.images = [], [], []
        self._tag = None

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.images.append(dict(attrs).get("src", ""))
        if tag in ("h2", "td"):
            self._tag, self._text = tag, ""

    def handle_data(self, data):
        if self._tag:
            self._text += data

    def handle_endtag(self, tag):
        if tag == self._tag:
            (self.headings if tag == "h2" else self.cells).append(self._text.strip())
            self._tag = None


def painted(png: Path) -> tuple[int, int]:
    """(distinct saturated colours, screenshot rows with > 200 saturated pixels): text and
    table rules are grey, so only painted figures give many of both."""
    import numpy as np
    from PIL import Image

    with Image.open(png) as img:
        assert img.size == WINDOW
        hsv = np.asarray(img.convert("HSV"))
        rgb = np.asarray(img.convert("RGB")).reshape(-1, 3)
    saturated = (hsv[..., 1] > 80) & (hsv[..., 2] > 40)
    colours = np.unique(rgb[saturated.reshape(-1)], axis=0)
    return len(colours), int((saturated.sum(axis=1) > 200).sum())


@pytest.fixture(scope="module")
def report_page(tiny_checkpoint, tmp_path_factory):
    pytest.importorskip("matplotlib", reason="the figures need armor-export[plots]")
    root = tmp_path_factory.mktemp("browser")
    ckpt = Path(shutil.copytree(tiny_checkpoint, root / "build" / "checkpoint"))
    verify_report(root / "build" / "verify")
    record_result(ckpt, EvalResult(str(ckpt), 31.5, 64, 0.1, True, "wikipedia", 32, 2))
    return write_report(ckpt)


def test_dom_has_every_section_table_row_and_data_uri_image(report_page, tmp_path):
    dom = _Dom()
    dom.feed(chromium(report_page, tmp_path / "profile", "--dump-dom").stdout)
    assert dom.headings == SECTIONS
    assert "model.layers.1.mlp.down_proj" in dom.cells  # the per-matrix tables
    assert {"31.500", "✓", "onnxruntime", "total"} <= set(dom.cells)
    assert len(dom.images) == 2
    for src in dom.images:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"


def test_screenshot_shows_the_figures(report_page, tmp_path):
    pytest.importorskip("PIL", reason="Pillow (comes with matplotlib) reads the screenshot")
    shot = tmp_path / "report.png"
    chromium(report_page, tmp_path / "profile", f"--screenshot={shot}")
    colours, rows = painted(shot)
    assert colours > 1000 and rows > 150, (colours, rows)
    # negative control: the same page with undecodable image data paints no figure
    broken = tmp_path / "broken.html"
    broken.write_text(report_page.read_text().replace("base64,iVBOR", "base64,AAAAA"))
    chromium(broken, tmp_path / "profile", f"--screenshot={tmp_path / 'broken.png'}")
    colours, rows = painted(tmp_path / "broken.png")
    assert colours < 500 and rows < 20, (colours, rows)
