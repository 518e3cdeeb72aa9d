"""Benchmarks: print numbers measured side by side in one run (ratios and medians, not absolutes)."""
