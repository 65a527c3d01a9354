"""The engine folder, the contract between building an engine and running it.

``engine`` writes ``model.engine`` with ``build_report.json`` (and ``builder.log``) into one
folder; ``verify`` and the runtime (``runtime.trt_session``) read it back. What the report
records of the export it was built from (``export_binding``) and the checks that an engine
belongs to the export beside it and to the installed backend live here, so both sides use
one definition.
"""

from __future__ import annotations

import json
from pathlib import Path

from armor_export.errors import CorruptFileError, UserError
from armor_export.export_manifest import MANIFEST, ExportManifest
from armor_export.io import sha256_file

ENGINE_FILE = "model.engine"
DEFAULT_ENGINE_DIR = "engine"  # <export>/engine: where the engine verb writes by default
REPORT_JSON = "build_report.json"
BUILDER_LOG = "builder.log"


class EngineMismatchError(UserError):
    """The engine does not belong to the export beside it, or to the installed backend."""


def read_build_report(engine_dir: str | Path) -> dict:
    engine_dir = Path(engine_dir)
    path = engine_dir / REPORT_JSON
    if not (engine_dir / ENGINE_FILE).is_file() or not path.is_file():
        raise CorruptFileError(
            f"{engine_dir}: no {ENGINE_FILE} with its {REPORT_JSON}: "
            "build it with armor-export engine"
        )
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise CorruptFileError(f"{path}: unreadable build report ({exc})") from None


def export_binding(export_dir: Path, manifest: ExportManifest) -> dict:
    """What an engine records about the export it was built from."""
    return {
        "onnx_sha256": manifest.sha256.get(manifest.onnx),
        "export_manifest_sha256": _sha256(export_dir / MANIFEST),
    }


def check_engine_belongs(engine_dir: Path, export_dir: Path, manifest: ExportManifest) -> dict:
    """The build report of ``engine_dir`` after checking the engine is the one it describes,
    built from this export's graph; an EngineMismatchError saying which does not hold."""
    report = read_build_report(engine_dir)
    engine = engine_dir / ENGINE_FILE
    if report.get("engine_sha256") != _sha256(engine):
        raise EngineMismatchError(
            f"{engine} is not the engine its {REPORT_JSON} describes (sha256 differs): rebuild it"
        )
    onnx_sha = manifest.sha256.get(manifest.onnx)
    if report.get("onnx_sha256") != onnx_sha:
        raise EngineMismatchError(
            f"{engine} was built from another graph than {export_dir / manifest.onnx} "
            f"(onnx sha256 {str(report.get('onnx_sha256'))[:12]} vs {str(onnx_sha)[:12]}): "
            "rebuild it from this export"
        )
    # the limits and tokens it was built for: a manifest rewritten since (another export of
    # the same graph) is another export (an edited one fails ExportManifest.read already)
    recorded = report.get("export_manifest_sha256")
    if recorded is not None and recorded != _sha256(export_dir / MANIFEST):
        raise EngineMismatchError(
            f"{engine} was built from another {MANIFEST} than {export_dir / MANIFEST} "
            "(its sha256 differs: limits or tokens may differ): rebuild it from this export"
        )
    return report


def check_backend_version(trt, report: dict) -> None:
    """TensorRT engines are tied to the version that built them: say so before loading."""
    built = report.get("versions", {}).get(report.get("backend_module", ""))
    if built and built != trt.__version__:
        raise EngineMismatchError(
            f"the engine was built with {report.get('backend')} {built}, this is "
            f"{trt.__version__}: rebuild it with armor-export engine"
        )


def _sha256(path: Path) -> str | None:
    return sha256_file(path) if path.is_file() else None
