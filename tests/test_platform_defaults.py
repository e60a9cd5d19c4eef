"""Platform defaults (issue 26): a GPU gets bf16, cuDNN attention, remat and XLA flags; CPU
and TPU keep every setting; explicit gin bindings win; cuDNN's inputs compute attention."""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bigssl_jax import platform_defaults
from bigssl_jax.layers import attention
from bigssl_jax.models import best_rq
from bigssl_jax.models import encoder as encoder_lib

ENCODER = encoder_lib.EncoderConfig(model_dim=32, num_layers=1, num_heads=2)


def _model(encoder=ENCODER):
    return best_rq.BestRqTrainModel(encoder=encoder, objective=best_rq.BestRqConfig())


@pytest.mark.parametrize("platform", ["cpu", "tpu"])
def test_cpu_and_tpu_change_nothing(platform):
    assert platform_defaults.for_platform(platform) == platform_defaults.NONE
    model = _model()
    assert (
        platform_defaults.apply_to_model(model, platform_defaults.for_platform(platform)) is model
    )
    env = {"JAX_PLATFORMS": platform, "XLA_FLAGS": "--a=1"}
    assert platform_defaults.set_xla_flags(env) == () and env["XLA_FLAGS"] == "--a=1"


def test_gpu_gets_bf16_cudnn_attention_and_remat():
    gpu = platform_defaults.for_platform("gpu")
    encoder = platform_defaults.apply_to_model(_model(), gpu).encoder
    assert (encoder.dtype, encoder.attention_implementation, encoder.remat_policy) == (
        "bfloat16",
        "cudnn",
        "dots_saveable",
    )
    assert encoder.num_layers == ENCODER.num_layers  # nothing else changes


def test_explicit_fields_keep_their_values():
    gpu = platform_defaults.GPU
    encoder = platform_defaults.apply_to_model(_model(), gpu, explicit={"dtype"}).encoder
    # float32 kept, so no cuDNN attention (it takes no float32); remat still the GPU's
    assert (encoder.dtype, encoder.attention_implementation, encoder.remat_policy) == (
        "float32",
        None,
        "dots_saveable",
    )
    full = platform_defaults.apply_to_model(
        _model(), gpu, explicit=platform_defaults.ENCODER_FIELDS
    )
    assert full.encoder == ENCODER


def test_xla_flags_only_for_a_gpu_and_never_over_the_users():
    env = {"JAX_PLATFORMS": "cuda,cpu", "XLA_FLAGS": "--xla_gpu_enable_triton_gemm=true"}
    added = platform_defaults.set_xla_flags(env)
    assert "--xla_gpu_enable_triton_gemm=false" not in added
    assert len(added) == len(platform_defaults.GPU_XLA_FLAGS) - 1
    assert env["XLA_FLAGS"].startswith("--xla_gpu_enable_triton_gemm=true ")
    assert platform_defaults.set_xla_flags(env) == ()  # idempotent
    assert platform_defaults.gpu_requested({"JAX_PLATFORMS": "gpu"})


def test_gpu_xla_flags_are_known_to_this_xla():
    """XLA aborts on an unknown flag when its first backend starts; the CPU build parses the
    GPU flags too."""
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    env["XLA_FLAGS"] = " ".join(platform_defaults.GPU_XLA_FLAGS)
    code = "import jax.numpy as jnp; print(float(jnp.ones(3).sum()))"
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert run.returncode == 0 and run.stdout.strip() == "3.0", run.stderr[-2000:]


def test_encoder_config_checks_the_attention_implementation():
    with pytest.raises(ValueError, match="attention_implementation"):
        encoder_lib.EncoderConfig(attention_implementation="flash")


def test_cudnn_inputs_give_the_masked_attention():
    """`cudnn_attention` (key lengths, T padded to even) computes, through XLA, what the mask
    path does, on the valid query rows."""
    rng = np.random.default_rng(0)
    q, k, v = (jnp.asarray(rng.standard_normal((2, 7, 2, 8)), jnp.float32) for _ in range(3))
    bias = jnp.asarray(rng.standard_normal((1, 2, 7, 7)), jnp.float32)
    valid = np.array([7, 4])
    paddings = jnp.asarray(np.arange(7)[None, :] >= valid[:, None], jnp.float32)
    mask = (paddings < 0.5)[:, None, None, :]
    expected = jax.nn.dot_product_attention(q, k, v, bias=bias, mask=mask)
    got = attention.cudnn_attention(q, k, v, bias, paddings, implementation="xla")
    assert got.shape == expected.shape
    for row, length in enumerate(valid):
        np.testing.assert_allclose(got[row, :length], expected[row, :length], atol=1e-5)
