"""Shared pieces of the benchmark scripts (imported as a sibling module: run them as scripts)."""

from __future__ import annotations

import os
import platform
from pathlib import Path


def cpu_description() -> str:
    """CPU model and core count, e.g. 'Intel(R) Xeon(R) Processor, 2 cores'."""
    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores"


def write_section(path: Path, section: str) -> None:
    """Put ``section`` (its first and last lines are its begin/end markers) into the file at
    ``path`` in place of the previous one, or at the end; the rest of the file is kept."""
    from armor_export.io import write_text

    lines = section.splitlines()
    begin, end = lines[0], lines[-1]
    text = path.read_text() if path.exists() else ""
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        text = head + section + rest.split(end, 1)[1]
    else:
        text = text.rstrip("\n") + ("\n\n" if text else "") + section + "\n"
    write_text(path, text)
