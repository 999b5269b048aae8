"""Model inversion: losses, engines (DeepInversion, ...) and the public `invert()` entry point."""

from dfcl_jax.inversion.api import ENGINES, as_teacher_fn, invert
from dfcl_jax.inversion.deepinversion import DeepInversionConfig, InversionResult, deepinversion

__all__ = ["ENGINES", "DeepInversionConfig", "InversionResult", "as_teacher_fn", "deepinversion",
           "invert"]
