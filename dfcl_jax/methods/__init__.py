"""Continual learners, registered by name (`config.method.name`)."""

from dfcl_jax.methods import abd, deepinversion, dgr, finetune, joint, lwf, lwf_mc  # noqa: F401  (registration)
from dfcl_jax.methods.base import METHODS, Method, StepContext, TaskInfo, get_method, method_config

__all__ = ["METHODS", "Method", "StepContext", "TaskInfo", "get_method", "method_config"]
