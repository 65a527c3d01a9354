"""The pruning report: loss curves, heat maps, perplexity, wrapper overhead, parity."""

from armor_export.report.collect import ReportData, collect
from armor_export.report.render import write_report

__all__ = ["ReportData", "collect", "write_report"]
