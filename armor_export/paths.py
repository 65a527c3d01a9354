"""Output folders kept apart from their inputs.

A command's output folder must neither be nor hold one of its inputs: ``prune -o`` set to
the model's folder wrote the pruned checkpoint over the dense model (#24). Paths are
compared resolved (``~``, ``..``, symbolic links, relative or absolute), never as strings.
"""

from __future__ import annotations

from pathlib import Path

from armor_export.errors import UserError


def check_apart(output_dir: str | Path, inputs: dict[str, str | Path], verb: str) -> None:
    """A one-line UserError when ``output_dir`` is, or holds, one of ``inputs`` (what -> path;
    a name that is not on disk, such as a hub id or ``botchan``, is no path and passes).
    Called before anything is written."""
    out = Path(output_dir).expanduser().resolve()
    for what, given in inputs.items():
        path = Path(given).expanduser()
        if not str(given) or not path.exists():
            continue
        path = path.resolve()
        if path == out or out in path.parents:
            relation = "is" if path == out else "holds"
            raise UserError(
                f"output folder {output_dir} {relation} the {what} ({given}): {verb} would "
                "write into it; choose another output folder"
            )
