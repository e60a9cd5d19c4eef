"""Every gin/models/*.gin parses, has its published hyperparameters, and counts to within 5% of
its published size (shapes only: `jax.eval_shape`, nothing is allocated)."""

import json
import subprocess
import sys

import gin
import pytest

from bigssl_jax import configurables, gin_utils, paths
from bigssl_jax.commands import params

# name -> (published parameter count or None, hyperparameters the gin must set).
MODELS = {
    "smoke": (None, dict(model_dim=64, num_layers=2, num_heads=4, use_relative_position=True)),
    "small": (
        None,
        dict(model_dim=144, num_layers=4, num_heads=4, conv_kernel_size=15,
             use_relative_position=True, ff_mult=4, subsampling_channels=32),
    ),
    "L": (
        0.1e9,
        dict(model_dim=512, num_layers=17, num_heads=8, conv_kernel_size=32,
             use_relative_position=True, ff_mult=4, stacking_layer=None),
    ),
    "XL": (
        0.6e9,
        dict(model_dim=1024, num_layers=24, num_heads=8, conv_kernel_size=5,
             use_relative_position=False, ff_mult=4, stacking_layer=None),
    ),
    "XXL": (
        1.0e9,
        dict(model_dim=1024, num_layers=42, num_heads=8, conv_kernel_size=5,
             use_relative_position=False, ff_mult=4, stacking_layer=None),
    ),
    "XXL_plus": (
        1.1e9,
        dict(model_dim=1024, num_layers=43, num_heads=8, conv_kernel_size=5,
             use_relative_position=False, ff_mult=4, stacking_layer=42),
    ),
    "G": (8e9, dict(model_dim=3072, num_layers=36, num_heads=16, ff_mult=4)),
    "w2v_bert_2": (
        0.58e9,
        dict(model_dim=1024, num_layers=24, num_heads=16, conv_kernel_size=31, ff_mult=4,
             use_relative_position=True, relative_position_kind="shaw_key",
             causal_conv=True, input_layer="stack", layer_norm_epsilon=1e-5),
    ),
}  # fmt: skip


@pytest.fixture(autouse=True)
def _clean_gin():
    gin.clear_config()
    yield
    gin.clear_config()


def test_every_model_gin_is_listed():
    shipped = {path.stem for path in (paths.GIN_DIR / "models").glob("*.gin")}
    assert shipped == set(MODELS)


@pytest.mark.parametrize("name", list(MODELS))
def test_model_gin(name):
    published, hyperparameters = MODELS[name]
    gin_utils.parse([f"models/{name}.gin"])
    config = configurables.EncoderConfig()
    assert config.input_dim == 80
    for field, value in hyperparameters.items():
        assert getattr(config, field) == value, field
    counts = params.count_parameters(config)
    assert counts["total"] == sum(n for module, n in counts.items() if module != "total")
    if published is None:  # the CPU-sized smoke and small encoders
        assert counts["total"] < 5e6
    else:
        assert abs(counts["total"] / published - 1) < 0.05, counts["total"]


def test_per_block_count_matches_formula():
    """A block without relative positions has 23 D^2 + (K + 30) D parameters (FFN width 4D)."""
    gin_utils.parse(["models/XL.gin"])
    config = configurables.EncoderConfig()
    d, k = config.model_dim, config.conv_kernel_size
    counts = params.count_parameters(config)
    assert counts["stages_0"] == config.num_layers * (23 * d * d + (k + 30) * d)


def test_params_command_prints_json():
    result = subprocess.run(
        [sys.executable, "-m", "bigssl_jax.cli", "params", "--gin_file=models/smoke.gin", "--json"],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    counts = json.loads(result.stdout.strip().splitlines()[-1])
    gin_utils.parse(["models/smoke.gin"])
    assert counts == params.count_parameters(configurables.EncoderConfig())


def test_params_command_bad_config_is_one_line():
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "bigssl_jax.cli",
            "params",
            "--gin_file=models/XL.gin",
            "--gin_bindings=EncoderConfig.num_heads = 7",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        "bigssl params: bad EncoderConfig: model_dim 1024 is not divisible by num_heads 7"
    )
