"""Continual-learning metrics from the accuracy matrix, and diagnostics."""

from dfcl_jax.metrics.continual import (
                                        average_incremental_accuracy,
                                        final_accuracy,
                                        forgetting,
                                        omega,
                                        summarize,
)

__all__ = ["average_incremental_accuracy", "final_accuracy", "forgetting", "omega", "summarize"]
