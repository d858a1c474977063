"""Plots of runs and models (matplotlib, written as PNG files; no display needed)."""
