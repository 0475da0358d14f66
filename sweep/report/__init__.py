"""Comparison reports: `python -m sweep.report` turns a sweep's records into HTML, Markdown, CSV and plots."""

from sweep.report.cli import main

__all__ = ["main"]
