"""Analytic model FLOPs against XLA's count of the compiled encoder on CPU.

XLA's `cost_analysis()['flops']` counts every HLO op: matmuls and convolutions at 2 FLOPs per
multiply-add like the analytic count, plus elementwise work (activations, LayerNorm, softmax,
masks, residuals) that the analytic count leaves out by design. So XLA's number is a little
*above* the analytic one: for the smoke width (D = 64) the elementwise share is largest, about
4% of the forward pass and 9% of forward + backward (the backward adds the elementwise
derivatives); at D = 256 it falls to about 1% / 6%. The tests bound that gap at 12%.

Blocks are unrolled (`scan_layers=False`): XLA's cost model counts a while loop's body once,
so a scanned stack would show the FLOPs of one block.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest

from bigssl_jax.jobs import flops
from bigssl_jax.models import encoder as encoder_lib

BATCH, FRAMES = 2, 400
# gin/models/smoke.gin, unrolled.
SMOKE = encoder_lib.EncoderConfig(
    model_dim=64,
    num_layers=2,
    num_heads=4,
    conv_kernel_size=5,
    use_relative_position=True,
    subsampling_channels=16,
    scan_layers=False,
)
TOLERANCE = 0.12


def _xla_flops(config, *, backward):
    model = encoder_lib.ConformerEncoder(config)
    features = jax.ShapeDtypeStruct((BATCH, FRAMES, config.input_dim), jnp.float32)
    paddings = jax.ShapeDtypeStruct((BATCH, FRAMES), jnp.float32)
    variables = nn.unbox(
        jax.eval_shape(
            lambda x, p: model.init(jax.random.key(0), x, p, train=False), features, paddings
        )
    )

    def forward(variables, x, p):
        return jnp.sum(model.apply(variables, x, p, train=False)[0])

    fn = jax.grad(forward) if backward else forward
    return jax.jit(fn).lower(variables, features, paddings).compile().cost_analysis()["flops"]


def test_forward_matches_xla():
    analytic = BATCH * flops.encoder_forward_flops(SMOKE, FRAMES)["total"]
    xla = _xla_flops(SMOKE, backward=False)
    assert analytic <= xla <= (1 + TOLERANCE) * analytic, (analytic, xla)


def test_forward_backward_matches_xla():
    analytic = flops.train_step_flops(SMOKE, FRAMES, BATCH)["train_step"]
    xla = _xla_flops(SMOKE, backward=True)
    assert analytic <= xla <= (1 + TOLERANCE) * analytic, (analytic, xla)


def test_stacking_layer_halves_later_blocks():
    config = encoder_lib.EncoderConfig(
        model_dim=64,
        num_layers=2,
        num_heads=4,
        subsampling_channels=16,
        stacking_layer=1,
        scan_layers=False,
    )
    counts = flops.encoder_forward_flops(config, FRAMES)
    one_block_full = flops.block_flops(config, FRAMES // 4)
    one_block_half = flops.block_flops(config, FRAMES // 8)
    assert counts["ffn"] == one_block_full["ffn"] + one_block_half["ffn"]
    assert counts["stacking"] == 2 * (FRAMES // 8) * 128 * 64
    xla = _xla_flops(config, backward=False)
    assert BATCH * counts["total"] <= xla <= (1 + TOLERANCE) * BATCH * counts["total"]


@pytest.mark.parametrize(
    ("name", "dim", "layers", "expected"),
    [("XL", 1024, 24, 0.593e9), ("XXL", 1024, 42, 1.027e9)],
)
def test_train_step_flops_scale_as_six_n_per_frame(name, dim, layers, expected):
    """Large models: ~6 N FLOPs per encoder frame (N params), plus attention's T^2 term."""
    config = encoder_lib.EncoderConfig(
        model_dim=dim, num_layers=layers, num_heads=8, subsampling_channels=512
    )
    frames = 1600
    step = flops.train_step_flops(config, frames, 1)["train_step"]
    six_n = 6 * expected * frames / 4
    assert 0.9 * six_n < step < 1.25 * six_n, name
