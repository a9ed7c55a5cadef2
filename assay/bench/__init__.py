"""Bench suites: methods x worlds x seeds -> tables, plots, HTML report."""
