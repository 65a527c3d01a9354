"""The report's figures as PNG bytes (matplotlib, optional: ``armor-export[plots]``).

Figures are drawn on ``matplotlib.figure.Figure`` objects, which render with the Agg
backend without pyplot: no global backend switch, no GUI, nothing left open.
"""

from __future__ import annotations

import io
import math
import statistics

from armor_export.report.collect import ReportData, projection_key

PLOTS_EXTRA = 'pip install "armor-export[plots]"'
DPI = 100
WIDTH_IN = 11.0  # 1100 px: fits a 1200 px window beside the page margins
# one colour per projection type (tab10 order), the rest share grey
PROJECTION_COLOURS = {
    "q": "#1f77b4",
    "k": "#ff7f0e",
    "v": "#2ca02c",
    "o": "#d62728",
    "gate": "#9467bd",
    "up": "#8c564b",
    "down": "#e377c2",
}
OTHER_COLOUR = "#7f7f7f"


def matplotlib_missing() -> str | None:
    """Why figures cannot be drawn here, or None when matplotlib is usable."""
    try:
        import matplotlib  # noqa: F401
        from matplotlib.figure import Figure  # noqa: F401
    except ImportError as exc:
        return f"matplotlib is not installed ({exc.msg}); {PLOTS_EXTRA} adds the figures"
    return None


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    return buf.getvalue()


def curves_png(data: ReportData) -> bytes | None:
    """Each ARMOR matrix's proxy loss over the iterations, relative to its start (NoWag-P),
    coloured by projection, with the median over matrices; None without histories."""
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.ticker import MaxNLocator

    rows = [m for m in data.matrices if len(m.history) > 1 and _positive(m.history[0])]
    if not rows:
        return None
    fig = Figure(figsize=(WIDTH_IN, 4.6), layout="constrained")
    ax = fig.add_subplot()
    curves = [[v / m.history[0] for v in m.history] for m in rows]
    for m, curve in zip(rows, curves, strict=True):
        ax.plot(curve, color=_colour(m.projection), lw=0.8, alpha=0.55)
    median = _median_curve(curves)
    ax.plot(median, color="black", lw=2.2)
    ax.axhline(1.0, color="#444444", ls="--", lw=1.2)
    longest = max(len(c) for c in curves)
    ax.set_xlim(0, max(1, longest - 1))
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    top = max((v for c in curves for v in c if math.isfinite(v)), default=1.0)
    ax.set_ylim(0, min(max(1.08, top * 1.03), 3.0))
    ax.set_xlabel("BCD iteration (0 = NoWag-P start)")
    ax.set_ylabel("proxy loss / NoWag-P proxy loss")
    ax.set_title(f"ARMOR proxy loss over the iterations ({len(rows)} matrices)")
    ax.grid(True, color="#e5e5e5", lw=0.6)
    projections = sorted({m.projection for m in rows}, key=projection_key)
    handles = [Line2D([], [], color=_colour(p), lw=2, label=p) for p in projections]
    handles += [
        Line2D([], [], color="black", lw=2.2, label="median"),
        Line2D([], [], color="#444444", ls="--", lw=1.2, label="NoWag-P"),
    ]
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    return _png(fig)


def heatmap_png(data: ReportData) -> bytes | None:
    """Final proxy loss per decoder layer x projection: the method's, NoWag-P's (shared
    log colour scale) and their ratio; None when no matrix has both losses."""
    from matplotlib import colors
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    rows = [m for m in data.with_losses if m.layer is not None]
    if not rows:
        return None
    layers = sorted({m.layer for m in rows})
    projections = sorted({m.projection for m in rows}, key=projection_key)
    grid = {(m.layer, m.projection): m for m in rows}

    def values(attr: str) -> list[list[float]]:
        out = []
        for layer in layers:
            line = []
            for p in projections:
                m = grid.get((layer, p))
                value = getattr(m, attr) if m is not None else None
                line.append(value if value is not None and value > 0 else math.nan)
            out.append(line)
        return out

    losses, nowag, ratio = values("proxy_loss"), values("nowag_loss"), values("ratio")
    finite = [v for grid_ in (losses, nowag) for line in grid_ for v in line if v == v]
    lo, hi = min(finite), max(finite)
    loss_norm = colors.LogNorm(lo, hi if hi > lo else lo * 10)
    ratios = [v for line in ratio for v in line if v == v]
    spread = max(max(ratios), 1 / min(ratios), 1.25)  # centred on 1 in log space
    ratio_norm = colors.LogNorm(1 / spread, spread)
    loss_cmap = _with_grey("viridis")
    ratio_cmap = _with_grey("RdBu_r")

    height = max(3.8, 0.3 * len(layers) + 1.9)
    fig = Figure(figsize=(WIDTH_IN, height), layout="constrained")
    axes = fig.subplots(1, 3, sharey=True)
    method = data.method_name
    panels = (
        (losses, loss_norm, loss_cmap, f"{method}: final proxy loss"),
        (nowag, loss_norm, loss_cmap, "NoWag-P: proxy loss"),
        (ratio, ratio_norm, ratio_cmap, f"ratio {method} / NoWag-P"),
    )
    images = []
    for ax, (grid_values, norm, cmap, title) in zip(axes, panels, strict=True):
        images.append(ax.imshow(grid_values, norm=norm, cmap=cmap, aspect="auto"))
        ax.set_title(title, fontsize=10)
        ax.set_xticks(range(len(projections)), projections, fontsize=8)
        ax.set_yticks(range(len(layers)), [str(n) for n in layers], fontsize=7)
        ax.set_xlabel("projection")
        ax.tick_params(length=0)
    axes[0].set_ylabel("decoder layer")
    if len(layers) <= 48:
        _annotate(axes[2], ratio, ratio_norm, ratio_cmap)
    for i, line in enumerate(ratio):  # cells above a promised NoWag-P bound: outlined
        for j, value in enumerate(line):
            if value > 1 and data.bounded_by_nowag:
                axes[2].add_patch(
                    Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, ec="#d50000", lw=2.5)
                )
    loss_bar = fig.colorbar(images[1], ax=list(axes[:2]), shrink=0.9, pad=0.01)
    loss_bar.ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    loss_bar.ax.yaxis.set_major_formatter(FuncFormatter(lambda value, _pos: f"{value:g}"))
    loss_bar.ax.yaxis.set_minor_formatter(NullFormatter())
    loss_bar.set_label("proxy loss (log scale)")
    ratio_bar = fig.colorbar(images[2], ax=axes[2], shrink=0.9, pad=0.02)
    ticks = _ratio_ticks(spread)
    ratio_bar.set_ticks(ticks, labels=[f"{t:g}" for t in ticks])
    ratio_bar.ax.minorticks_off()
    ratio_bar.set_label("ratio (< 1: below NoWag-P)")
    return _png(fig)


def quant_png(data: ReportData) -> bytes | None:
    """Each core's proxy loss pruned, quantized and re-fitted (log scale), and the quantized
    and final losses over the pruned one, in layer and projection order; None for a float
    checkpoint."""
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    quant = data.quant
    if quant is None or not quant.rows:
        return None
    rows = quant.rows
    x = list(range(len(rows)))
    fig = Figure(figsize=(WIDTH_IN, 6.2), layout="constrained")
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=(3, 2))
    series = [("pruned", "loss_pruned", "#7f7f7f", "o", 5.5),
              ("quantized", "loss_quantized", "#ff7f0e", "x", 5.0)]  # fmt: skip
    if quant.refitted:
        series.append(("re-fitted", "loss_refit", "#1f77b4", ".", 6.0))
    for label, attr, colour, marker, size in series:
        pts = [(i, getattr(r, attr)) for i, r in zip(x, rows, strict=True)]
        pts = [(i, v) for i, v in pts if v is not None and v > 0]
        if pts:
            top.plot(*zip(*pts, strict=True), ls="", marker=marker, ms=size, color=colour,
                     label=label, alpha=0.85)  # fmt: skip
    top.set_yscale("log")
    top.set_ylabel("proxy loss (log scale)")
    top.set_title(
        f"{data.method_name} + {quant.scheme_title}: proxy loss per core ({len(rows)} matrices)"
    )
    ratios = [("quantized / pruned", "quantized_ratio", "#ff7f0e", "x")]
    if quant.refitted:
        ratios.append(("re-fitted / pruned", "final_ratio", "#1f77b4", "."))
    for label, attr, colour, marker in ratios:
        pts = [(i, getattr(r, attr)) for i, r in zip(x, rows, strict=True)]
        pts = [(i, v) for i, v in pts if v is not None]
        if pts:
            bottom.plot(*zip(*pts, strict=True), ls="", marker=marker, ms=6, color=colour,
                        label=label)  # fmt: skip
    bottom.axhline(1.0, color="#444444", ls="--", lw=1.2)
    bottom.set_ylabel("loss / pruned loss")
    raised = [(i, r) for i, r in zip(x, rows, strict=True) if r.refit_raised]
    for i, r in raised:
        for ax, value in ((top, r.loss_refit), (bottom, r.final_ratio)):
            ax.plot([i], [value], ls="", marker="o", ms=12, mfc="none", mec="#d50000", mew=2)
    # one tick per decoder layer, at its first matrix; faint lines between layers
    starts = [i for i, r in enumerate(rows) if i == 0 or r.layer != rows[i - 1].layer]
    for ax in (top, bottom):
        for i in starts[1:]:
            ax.axvline(i - 0.5, color="#e0e0e0", lw=0.8)
        ax.grid(True, axis="y", color="#e5e5e5", lw=0.6)
    step = max(1, len(starts) // 30)
    ticks = starts[::step]
    bottom.set_xticks(ticks, [str(rows[i].layer) if rows[i].layer is not None else rows[i].name
                              for i in ticks], fontsize=7)  # fmt: skip
    bottom.set_xlabel("decoder layer (its matrices in projection order)")
    bottom.set_xlim(-0.5, len(rows) - 0.5)
    handles, labels = top.get_legend_handles_labels()
    if raised:
        handles.append(Line2D([], [], ls="", marker="o", ms=10, mfc="none", mec="#d50000", mew=2))
        labels.append("re-fit above quantized")
    top.legend(handles, labels, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    bottom.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    return _png(fig)


def figures(data: ReportData) -> dict[str, bytes]:
    """File name -> PNG of every figure that has data (needs matplotlib)."""
    out = {}
    for name, draw in (
        ("curves.png", curves_png),
        ("heatmap.png", heatmap_png),
        ("quant.png", quant_png),
    ):
        png = draw(data)
        if png is not None:
            out[name] = png
    return out


def _positive(value: float) -> bool:
    return math.isfinite(value) and value > 0


def _colour(projection: str) -> str:
    return PROJECTION_COLOURS.get(projection, OTHER_COLOUR)


def _median_curve(curves: list[list[float]]) -> list[float]:
    """Median over matrices per iteration. A matrix that stopped early (patience) keeps the
    best loss it reached, which is the iterate it kept."""
    longest = max(len(c) for c in curves)
    kept = []
    for curve in curves:
        best, padded = math.inf, []
        for v in curve:
            best = min(best, v) if math.isfinite(v) else best
            padded.append(v if math.isfinite(v) else best)
        kept.append(padded + [best] * (longest - len(curve)))
    return [statistics.median(c[i] for c in kept) for i in range(longest)]


def _ratio_ticks(spread: float) -> list[float]:
    """Ticks between 1/spread and spread: the coarsest of decades, 1-2-5 or finer steps
    that gives at least four."""
    ticks = [1.0]
    for steps in ((1,), (1, 2, 5), (1, 1.5, 2, 3, 5, 7)):
        candidates = [m * 10.0**e for e in range(-3, 4) for m in steps]
        ticks = [round(t, 6) for t in candidates if 1 / spread <= t <= spread]
        if len(ticks) >= 4:
            return ticks
    return sorted({round(1 / spread, 2), 1.0, round(spread, 2), *ticks})


def _with_grey(name: str):
    """A colour map drawing missing cells (NaN) light grey."""
    from matplotlib import colormaps

    return colormaps[name].with_extremes(bad="#d9d9d9")


def _annotate(ax, grid_values, norm, cmap) -> None:
    """Write each cell's value into it, dark or light to stay readable."""
    for i, line in enumerate(grid_values):
        for j, value in enumerate(line):
            if value != value:
                continue
            r, g, b, _ = cmap(norm(value))
            light = 0.299 * r + 0.587 * g + 0.114 * b < 0.5
            ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=7,
                    color="white" if light else "black")  # fmt: skip
