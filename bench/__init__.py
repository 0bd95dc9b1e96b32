"""Benchmarks (not tests): they print figures measured in one run, with ratios."""
