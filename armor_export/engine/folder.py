"""The engine folder, the contract between building an engine and running it.

``engine`` writes ``model.engine`` with ``build_report.json`` (and ``builder.log``) into one
folder; ``verify`` and the runtime (``runtime.trt_session``) read it back. What the report
records of the export it was built from (``export_binding``) and the checks that an engine
belongs to the export beside it and to the installed backend live here, so both sides use
one definition.

Where an export's engine lives is one rule, ``engine_dir_of`` (design.md §7.5): every verb
(``engine``'s default output, ``verify``, ``generate``, the build's report) asks it. The
folder is self-contained: paths in its report are relative to it, and a plugin engine carries
its plugin library, copied in at build with its sha256 (``plugin_library_of``), so an engine
folder copied to another machine, or read from another working folder, still runs.
"""

from __future__ import annotations

import json
from pathlib import Path

from armor_export.errors import CorruptFileError, UserError
from armor_export.export_manifest import MANIFEST, ExportManifest
from armor_export.io import sha256_file

ENGINE_FILE = "model.engine"
DEFAULT_ENGINE_DIR = "engine"  # <export>/engine, or <build>/engine (``engine_dir_of``)
REPORT_JSON = "build_report.json"
BUILDER_LOG = "builder.log"
# a build folder (``armor-export build``): the export stage writes <build>/onnx and the engine
# stage <build>/engine; ``build_manifest.json`` marks the folder (the stages read these names)
BUILD_MANIFEST = "build_manifest.json"
BUILD_EXPORT_DIR = "onnx"


class EngineMismatchError(UserError):
    """The engine does not belong to the export beside it, or to the installed backend."""


def engine_dir_of(export_dir: str | Path) -> Path:
    """Where the engine of the export in ``export_dir`` lives: ``<build>/engine`` for the
    export a build made (``<build>/onnx`` with ``build_manifest.json`` beside it), else
    ``<export>/engine``. Relative to ``export_dir`` as given: a moved folder moves its engine.
    """
    export_dir = Path(export_dir)
    build = export_dir.parent
    if export_dir.name == BUILD_EXPORT_DIR and (build / BUILD_MANIFEST).is_file():
        return build / DEFAULT_ENGINE_DIR
    return export_dir / DEFAULT_ENGINE_DIR


def plugin_library_of(engine_dir: str | Path, report: dict, override: str | Path = "") -> Path:
    """The plugin library to load with the engine in ``engine_dir``: ``override`` (the user's
    ``--plugin-library``) as given, else the copy the build put in the engine folder, checked
    against the sha256 its report recorded. A report older than the copy named the library
    by the path the build was given (absolute, or relative to where it ran): used as is."""
    from armor_export.engine.backends import PluginLibraryError

    if override:
        return Path(override)
    plugin = report.get("plugin") or {}
    recorded = plugin.get("library") or ""
    if not recorded:
        raise PluginLibraryError(
            f"{Path(engine_dir) / REPORT_JSON} records no plugin library: pass --plugin-library"
        )
    library = Path(engine_dir) / recorded  # an absolute recorded path stays itself
    if not library.is_file():
        raise PluginLibraryError(
            f"the engine's plugin library {library} is not a file (copy the whole engine "
            "folder, or pass --plugin-library)"
        )
    digest = plugin.get("library_sha256")
    if digest is not None and sha256_file(library) != digest:
        raise PluginLibraryError(
            f"{library} is not the plugin library the engine was built with (its sha256 "
            f"differs from {REPORT_JSON}): rebuild the engine, or pass --plugin-library"
        )
    return library


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
