"""Experiment configs and entry points (`python -m experiments.run --config=...`)."""
