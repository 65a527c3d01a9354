"""Run code in a fresh interpreter and check it loaded none of the heavy packages: the
runtime must work from the exported artefacts without PyTorch (the product's fifth part)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# the exporter package imports nothing heavy at import time, but it is the exporter: the
# runtime reads manifests through armor_export.export_manifest only
HEAVY = ("torch", "transformers", "armor_export.export", "armor_export.prune")


def assert_runs_without_torch(code: str, timeout: float = 120) -> None:
    """Run ``code`` (dedented) in a fresh interpreter from the repository root; it must
    succeed and leave none of :data:`HEAVY` in ``sys.modules``."""
    check = (
        f"\nimport sys\nloaded = [m for m in {HEAVY!r} if m in sys.modules]\n"
        "assert not loaded, loaded\n"
    )
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code) + check], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
