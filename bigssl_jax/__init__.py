"""bigssl_jax: BigSSL-style semi-supervised speech recognition in JAX."""

__version__ = "0.1.0"
