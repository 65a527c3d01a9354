"""The parity report: per step, runner and output, max abs/rel error and a verdict.

JSON keeps every output; the Markdown table folds the KV-cache outputs of one step into a
single row holding the worst of them, so a 30-layer model stays readable.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from armor_export.io import write_json, write_text

REPORT_JSON = "verify_report.json"
REPORT_MD = "verify_report.md"


DISPLAY_NAMES = {
    "pytorch": "PyTorch",
    "onnxruntime": "ONNX Runtime",
    "numpy-reference": "NumPy reference",
}


def display_name(runner: str) -> str:
    return DISPLAY_NAMES.get(runner, runner)


@dataclass
class OutputParity:
    step: str  # "prefill" | "decode-1" ...
    runner: str
    output: str
    max_abs: float
    max_rel: float
    atol: float
    rtol: float
    passed: bool


@dataclass
class VerifyReport:
    export_dir: str
    model: str
    dtype: str
    lowering: str
    reference: str = "pytorch"
    runners: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    inputs: dict = field(default_factory=dict)
    rows: list[OutputParity] = field(default_factory=list)
    error: str | None = None
    # the built engine: what it is, whether it ran here, and if not why
    engine: dict | None = None
    engine_executed: bool = False
    engine_not_run_reason: str | None = None
    versions: dict = field(default_factory=dict)
    seconds: float = 0.0
    # an 8-bit export: scheme, how the tolerances were derived, PyTorch's activation
    # saturation counts, each backend's note, and per runner the top-1 agreement on logits
    quant: dict | None = None

    @property
    def passed(self) -> bool:
        top1 = (self.quant or {}).get("top1", {})
        return (
            self.error is None
            and bool(self.rows)
            and all(r.passed for r in self.rows)
            and all(t["passed"] for t in top1.values())
        )

    def to_dict(self) -> dict:
        data = asdict(self)
        data["passed"] = self.passed
        data["verdict"] = self.verdict()
        return data

    def verdict(self) -> str:
        """The final line: PASSED/FAILED and exactly what was compared, and what was not."""
        if self.error:
            return f"FAILED: {self.error}"
        parts = []
        for runner in self.runners:
            rows = [r for r in self.rows if r.runner == runner]
            if not rows:
                continue
            top1 = (self.quant or {}).get("top1", {}).get(runner)
            ok = all(r.passed for r in rows) and (top1 is None or top1["passed"])
            worst = max(rows, key=lambda r: (not r.passed, r.max_abs))
            parts.append(
                f"PyTorch {'=' if ok else '≠'} {display_name(runner)} (max abs err "
                f"{max(r.max_abs for r in rows):.2g}"
                + (f" ≤ {worst.atol:g}" if ok and worst.max_abs <= worst.atol else "")
                + (
                    ""
                    if all(r.passed for r in rows)
                    else f"; {worst.output} at {worst.step} beyond atol {worst.atol:g} "
                    f"rtol {worst.rtol:g}"
                )  # fmt: skip
                + (
                    ""
                    if top1 is None
                    else f"; top-1 {top1['agreement']:.1%} (≥ {top1['required']:.0%} required)"
                )
                + ")"
            )
        if self.engine is None:
            parts.append(f"no engine checked ({self.engine_not_run_reason or 'none built'})")
        elif not self.engine_executed:
            reason = self.engine_not_run_reason or "not run"
            if not reason.startswith("engine "):
                reason = f"engine built for {self.engine['compute_capability']}, not run: {reason}"
            parts.append(reason)
        return f"{'PASSED' if self.passed else 'FAILED'}: " + "; ".join(
            parts or ["nothing compared"]
        )

    def summary_rows(self) -> list[dict]:
        """One row per (step, runner, logits | present.*), worst case first within a group."""
        groups: dict[tuple[str, str, str], list[OutputParity]] = {}
        for row in self.rows:
            kind = "logits" if row.output == "logits" else "present.*"
            groups.setdefault((row.step, row.runner, kind), []).append(row)
        out = []
        for (step, runner, kind), rows in groups.items():
            worst = max(rows, key=lambda r: (not r.passed, r.max_abs))
            out.append(
                {
                    "step": step,
                    "runner": runner,
                    "output": kind if kind == "logits" else f"{kind} ({len(rows)})",
                    "worst": worst.output,
                    "max_abs": max(r.max_abs for r in rows),
                    "max_rel": max(r.max_rel for r in rows),
                    "atol": worst.atol,
                    "rtol": worst.rtol,
                    "passed": all(r.passed for r in rows),
                }
            )
        return out

    def markdown(self) -> str:
        lines = [
            f"# Parity report: {self.export_dir}",
            "",
            f"- reference: {self.reference} ({self.model}), dtype {self.dtype}, "
            f"lowering {self.lowering}",
            f"- runners: {', '.join(self.runners) or 'none'}",
        ]
        lines += [f"- skipped {k}: {v}" for k, v in self.skipped.items()]
        if self.engine:
            ran = "run" if self.engine_executed else f"not run ({self.engine_not_run_reason})"
            lines.append(
                f"- engine: {self.engine['dir']} ({self.engine['backend']}, "
                f"{self.engine['compute_capability']}): {ran}"
            )
        if self.inputs:
            lines.append(f"- inputs: {self.inputs}")
        if self.quant:
            q = self.quant
            sat = q.get("saturation", {})
            lines.append(
                f"- 8-bit ({q['scheme']}): {q['tolerance']}; PyTorch's activations beyond the "
                f"format's range (saturated, as the graph saturates them): "
                f"{sat.get('saturated', 0)} of {sat.get('seen', 0)}"
                + (f", most in {sat['worst']}" if sat.get("worst") else "")
            )
            lines += [f"- {display_name(k)}: {v}" for k, v in q.get("notes", {}).items()]
        lines += [
            "",
            "| step | runner | output | max abs err | max rel err | atol | rtol | verdict |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in self.summary_rows():
            verdict = "✓" if r["passed"] else f"✗ ({r['worst']})"
            lines.append(
                f"| {r['step']} | {r['runner']} | {r['output']} | {r['max_abs']:.3g} | "
                f"{r['max_rel']:.3g} | {r['atol']:g} | {r['rtol']:g} | {verdict} |"
            )
        if self.error:
            lines += ["", f"**Error:** {self.error}"]
        lines += ["", f"**{self.verdict()}**", ""]
        return "\n".join(lines)

    def write(self, folder: str | Path) -> Path:
        folder = Path(folder)
        write_json(folder / REPORT_JSON, self.to_dict())
        write_text(folder / REPORT_MD, self.markdown())
        return folder / REPORT_JSON
