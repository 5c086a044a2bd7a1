"""Measurements of a result: comparison metrics, quality checks, organ summary, CT check (layer 0)."""
