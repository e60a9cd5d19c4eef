"""seqio tasks of bigssl_jax (installed as `bigssl_tasks`)."""
