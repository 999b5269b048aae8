"""Continual learners, registered by name (`config.method.name`)."""

from dfcl_jax.methods import (  # noqa: F401  (registration)
    abd,
    clip_pmi,
    coreset,
    deepinversion,
    dgr,
    finetune,
    generator_replay,
    joint,
    lwf,
    lwf_mc,
    pmi,
    rdfcil,
)
from dfcl_jax.methods.base import METHODS, Method, StepContext, TaskInfo, get_method, method_config

__all__ = ["METHODS", "Method", "StepContext", "TaskInfo", "get_method", "method_config"]
