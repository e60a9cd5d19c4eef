"""`bigssl params`: count an encoder config's parameters without allocating them.

    bigssl params --gin_file=models/XL.gin
    bigssl params --gin_file=models/G.gin --json

Reads `EncoderConfig` after gin parsing, traces the encoder's `init` with `jax.eval_shape`
(shapes only, so the 8B config counts in seconds on a laptop) and prints the total and the
count of each top-level module (subsampling, each stage of blocks, stacking).
"""

import json
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from absl import flags

from bigssl_jax import configurables
from bigssl_jax.models import encoder

_JSON = flags.DEFINE_bool("json", False, "Print one JSON object instead of a table.")

# Frames of the dummy input; parameter shapes do not depend on it.
_NUM_FRAMES = 16


def parameter_shapes(config: encoder.EncoderConfig) -> dict:
    """The encoder's parameter tree as `jax.ShapeDtypeStruct`s (nothing is allocated)."""
    model = encoder.ConformerEncoder(config)

    def init():
        features = jnp.zeros((1, _NUM_FRAMES, config.input_dim), jnp.float32)
        paddings = jnp.zeros((1, _NUM_FRAMES), jnp.float32)
        return model.init(jax.random.key(0), features, paddings, train=False)

    return nn.unbox(jax.eval_shape(init))["params"]


def count_parameters(config: encoder.EncoderConfig) -> dict[str, int]:
    """{'total': N, <top-level module>: n, ...} for the encoder built from `config`.

    Modules are listed in the order the data flows through them.
    """
    shapes = parameter_shapes(config)
    order = ["subsampling"]
    for index, (start, _) in enumerate(config.stages):
        order += ["stacking"] if start == config.stacking_layer else []
        order.append(f"stages_{index}")
    counts = {
        name: sum(int(np.prod(leaf.shape)) for leaf in jax.tree_util.tree_leaves(shapes[name]))
        for name in order
    }
    assert set(counts) == set(shapes), (set(shapes), order)
    return {"total": sum(counts.values()), **counts}


def _table(counts: dict[str, int]) -> str:
    width = max(len(name) for name in counts)
    return "\n".join(
        f"{name:<{width}}  {count:>15,d}  {count / 1e9:7.3f}B" for name, count in counts.items()
    )


def main(argv) -> int:
    del argv
    try:
        config = configurables.EncoderConfig()
    except ValueError as error:  # an inconsistent config, e.g. heads not dividing the width
        message = str(error).splitlines()[0]  # gin appends "In call to configurable ..."
        print(f"bigssl params: bad EncoderConfig: {message}", file=sys.stderr)
        return 2
    counts = count_parameters(config)
    print(json.dumps(counts) if _JSON.value else _table(counts))
    return 0
