"""dfcl_jax: data-free class-incremental learning with fast model inversion, in JAX/Flax."""

__version__ = "0.1.0"
