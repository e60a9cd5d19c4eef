"""Every gin configurable of the project, registered in one place.

Library modules never import gin; this file wraps their config dataclasses and entry
functions so gin files can bind them. Entry points use the wrapped names from here
(e.g. `configurables.EncoderConfig()` returns the config with the gin bindings applied).

One section per owner module; keep each wrapped name equal to the class name, so gin
files read `EncoderConfig.num_layers = 17`.
"""

import gin

# Sections are added by the modules' owners below.

# --- bigssl_jax.partitioning ---------------------------------------------------------------
from bigssl_jax import partitioning  # noqa: E402

MeshConfig = gin.external_configurable(partitioning.MeshConfig, name="MeshConfig")

# --- bigssl_jax.layers.frontend ------------------------------------------------------------
from bigssl_jax.layers import frontend  # noqa: E402

LogMelConfig = gin.external_configurable(frontend.LogMelConfig, name="LogMelConfig")
SpecAugmentConfig = gin.external_configurable(frontend.SpecAugmentConfig, name="SpecAugmentConfig")

# --- bigssl_jax.models.encoder -------------------------------------------------------------
from bigssl_jax.models import encoder  # noqa: E402

EncoderConfig = gin.external_configurable(encoder.EncoderConfig, name="EncoderConfig")

# --- bigssl_jax.input_pipeline -------------------------------------------------------------
from bigssl_jax import input_pipeline  # noqa: E402

InputConfig = gin.external_configurable(input_pipeline.InputConfig, name="InputConfig")

# --- bigssl_jax.models.ssl_losses ----------------------------------------------------------
from bigssl_jax.models import ssl_losses  # noqa: E402

SSLLossWeights = gin.external_configurable(ssl_losses.SSLLossWeights, name="SSLLossWeights")
