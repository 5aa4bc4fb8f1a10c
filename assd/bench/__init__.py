"""Benchmarks: interleaved stage timing of runners and Table-2-style reports."""

from assd.bench.report import load_reports, make_report, merged_table, to_csv, to_markdown
from assd.bench.timing import benchmark

__all__ = ["benchmark", "load_reports", "make_report", "merged_table", "to_csv", "to_markdown"]
