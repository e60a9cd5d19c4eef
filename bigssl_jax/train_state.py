"""The train state: step, parameters, optimizer state and the optax transform.

A `flax.struct.PyTreeNode`, so it passes through `jax.jit` whole; the optax transform is a
static field (not a leaf), so the jitted step sees its hyperparameters as constants and the
sharding tree of a state (see `partitioning.state_shardings`) carries it unchanged.
"""

from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import struct


class TrainState(struct.PyTreeNode):
    """Everything a train step reads and updates.

    Attributes:
      step: number of applied updates, int32 scalar.
      params: the model's parameters (the 'params' collection).
      opt_state: the optax state for `params`.
      model_state: the model's other mutable collections (e.g. 'batch_stats'), updated
        by the step itself, not by the optimizer; empty when the model has none.
      tx: the optax transform (static).
    """

    step: jax.Array
    params: Any
    opt_state: optax.OptState
    model_state: Mapping[str, Any]
    tx: optax.GradientTransformation = struct.field(pytree_node=False)

    @classmethod
    def create(
        cls,
        *,
        params: Any,
        tx: optax.GradientTransformation,
        model_state: Mapping[str, Any] | None = None,
    ) -> "TrainState":
        """A state at step 0 with `tx.init(params)`.

        Args:
          params: parameters; may hold logical-partitioning boxes (they are kept, so
            `partitioning.init_sharded_state` can read them; the optimizer state is
            built from the unboxed values and sharded like the params).
          tx: the optax transform.
          model_state: other variable collections, default none.

        Returns:
          The new state.
        """
        return cls(
            step=jnp.zeros((), jnp.int32),
            params=params,
            opt_state=tx.init(nn.unbox(params)),
            model_state=dict(model_state or {}),
            tx=tx,
        )

    def apply_gradients(self, grads: Any, **model_state: Any) -> "TrainState":
        """One optimizer update: params <- params + tx.update(grads, opt_state, params).

        Args:
          grads: gradients, same tree as `params`.
          **model_state: updated non-param collections to store (e.g. batch_stats=...).

        Returns:
          The state with the step incremented and params / opt_state updated.
        """
        updates, opt_state = self.tx.update(grads, self.opt_state, self.params)
        return self.replace(
            step=self.step + 1,
            params=optax.apply_updates(self.params, updates),
            opt_state=opt_state,
            model_state={**self.model_state, **model_state},
        )
