"""Checkpoints: retention (keep-last + keep-best), another mesh, init-from, atomic steps, the
params a checkpoint serves (its EMA when it kept one)."""

import signal

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bigssl_jax import checkpointing, optimizers, partitioning
from bigssl_jax.partitioning import MeshConfig
from bigssl_jax.train_state import TrainState


class _Net(nn.Module):
    @nn.compact
    def __call__(self, x):
        init = nn.initializers.normal(1.0)
        w = self.param("w", nn.with_logical_partitioning(init, ("embed", "mlp")), (16, 8))
        b = self.param("b", nn.with_logical_partitioning(init, ("mlp",)), (8,))
        return x @ w + b


def _init_fn(name="adam", ema_decay=0.9):
    tx = optimizers.make_optimizer(
        optimizers.OptimizerConfig(name=name, warmup_steps=2, ema_decay=ema_decay)
    )

    def init_fn(rng):
        return TrainState.create(params=_Net().init(rng, jnp.zeros((1, 16)))["params"], tx=tx)

    return init_fn


def _sharded_state(init_fn, mesh, rng=0):
    """(state, abstract with shardings) on `mesh`, via the trainer's (fitted) shardings."""
    rules = partitioning.LOGICAL_AXIS_RULES
    boxed = jax.eval_shape(init_fn, jax.random.key(rng))
    shardings = partitioning.state_shardings(boxed, mesh, rules)
    with jax.set_mesh(mesh):
        state = jax.jit(lambda r: nn.unbox(init_fn(r)), out_shardings=shardings)(
            jax.random.key(rng)
        )
    return state, checkpointing.abstract_state(nn.unbox(boxed), shardings)


def _steps(model_dir):
    directory = checkpointing.checkpoint_dir(model_dir)
    return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit())


def test_restore_onto_another_mesh_gives_the_same_values(tmp_path):
    init_fn = _init_fn("adafactor")  # factored statistics: not param-shaped
    data_mesh = partitioning.make_mesh(MeshConfig(data=8))
    state, _ = _sharded_state(init_fn, data_mesh)
    state = state.replace(step=jnp.int32(7))
    checkpointer = checkpointing.Checkpointer(tmp_path)
    checkpointer.save(7, state, {"input": {"position": 3}})
    checkpointer.wait()

    model_mesh = partitioning.make_mesh(MeshConfig(data=1, fsdp=4, tensor=2))
    _, abstract = _sharded_state(init_fn, model_mesh, rng=1)
    restored, meta = checkpointer.restore(7, abstract)
    checkpointer.close()
    assert meta == {"input": {"position": 3}} and int(restored.step) == 7
    assert restored.params["w"].sharding.spec == jax.sharding.PartitionSpec("fsdp", "tensor")
    assert restored.params["w"].sharding.mesh.shape == model_mesh.shape
    jax.tree.map(
        np.testing.assert_array_equal,
        jax.tree.map(np.asarray, restored),
        jax.tree.map(np.asarray, state),
    )


def test_keep_last_and_keep_best_coexist(tmp_path):
    mesh = partitioning.make_mesh(MeshConfig(data=-1))
    state, _ = _sharded_state(_init_fn(), mesh)
    checkpointer = checkpointing.Checkpointer(
        tmp_path, keep_last=2, keep_best=1, best_metric="loss", async_save=False
    )
    eval_loss = {2: 3.0, 4: 1.0, 6: 2.0, 8: 2.5}  # step 4 is the best
    for step in range(1, 10):
        metrics = {"loss": eval_loss[step]} if step in eval_loss else None
        checkpointer.save(step, state, {}, metrics=metrics)
    checkpointer.close()
    assert _steps(tmp_path) == [4, 8, 9]


def test_init_from_params_only_into_another_optimizer(tmp_path):
    mesh = partitioning.make_mesh(MeshConfig(data=-1))
    state, _ = _sharded_state(_init_fn("adam"), mesh, rng=3)
    checkpointer = checkpointing.Checkpointer(tmp_path / "pretrain")
    checkpointer.save(5, state, {})
    checkpointer.close()
    _, abstract = _sharded_state(_init_fn("adafactor", ema_decay=None), mesh, rng=4)
    params = checkpointing.restore_params(tmp_path / "pretrain", abstract.params)
    jax.tree.map(np.testing.assert_array_equal, params, state.params)
    assert checkpointing.resolve_init_checkpoint(tmp_path / "pretrain").name == "5"


def test_a_half_written_step_is_never_listed(tmp_path):
    mesh = partitioning.make_mesh(MeshConfig(data=-1))
    state, _ = _sharded_state(_init_fn(), mesh)
    checkpointer = checkpointing.Checkpointer(tmp_path)
    checkpointer.save(2, state, {})
    checkpointer.close()
    # What a kill during the write of step 4 leaves: Orbax's temporary directory.
    partial = checkpointing.checkpoint_dir(tmp_path) / "4.orbax-checkpoint-tmp"
    (partial / "state.orbax-checkpoint-tmp").mkdir(parents=True)
    reopened = checkpointing.Checkpointer(tmp_path)
    assert reopened.latest_step() == 2 and reopened.all_steps() == [2]
    reopened.close()


def test_a_checkpoint_serves_the_ema_of_its_params_when_it_kept_one(tmp_path):
    mesh = partitioning.make_mesh(MeshConfig(data=-1))
    state, abstract = _sharded_state(_init_fn("adam", ema_decay=0.5), mesh)
    for _ in range(3):
        state = state.apply_gradients(jax.tree.map(jnp.ones_like, state.params))
    ema = optimizers.ema_params(state.opt_state)
    assert not np.allclose(ema["w"], state.params["w"])
    plain, _ = _sharded_state(_init_fn("adam", ema_decay=None), mesh, rng=1)
    for name, saved in (("ema_run", state), ("plain_run", plain)):
        checkpointer = checkpointing.Checkpointer(tmp_path / name)
        checkpointer.save(3, saved, {})
        checkpointer.close()
    ema_run, plain_run = tmp_path / "ema_run", tmp_path / "plain_run"

    assert checkpointing.params_source(ema_run) == "ema"
    served = checkpointing.restore_params(ema_run, abstract.params)
    jax.tree.map(np.testing.assert_array_equal, served, ema)
    part = checkpointing.restore_params(ema_run, {"w": abstract.params["w"]})  # a subtree
    np.testing.assert_array_equal(part["w"], ema["w"])
    np.testing.assert_array_equal(checkpointing.read_params_to_host(ema_run, "b"), ema["b"])
    assert checkpointing.saved_params(ema_run)["w"].shape == (16, 8)
    assert checkpointing.params_source(ema_run, ema=False) == "params"
    raw = checkpointing.restore_params(ema_run, abstract.params, ema=False)
    jax.tree.map(np.testing.assert_array_equal, raw, state.params)

    assert checkpointing.params_source(plain_run) == "params"  # no EMA kept: the params
    served = checkpointing.restore_params(plain_run, abstract.params)
    jax.tree.map(np.testing.assert_array_equal, served, plain.params)
    np.testing.assert_array_equal(
        checkpointing.read_params_to_host(plain_run, "w"), plain.params["w"]
    )


def test_preemption_handler_turns_signals_into_a_flag_and_restores_handlers():
    before = signal.getsignal(signal.SIGINT)
    with checkpointing.PreemptionHandler() as handler:
        assert not handler.requested
        signal.raise_signal(signal.SIGINT)
        assert handler.requested and handler.signum == signal.SIGINT
    assert signal.getsignal(signal.SIGINT) is before


def test_best_step_survives_a_resume_and_is_found(tmp_path):
    mesh = partitioning.make_mesh(MeshConfig(data=-1))
    state, _ = _sharded_state(_init_fn(), mesh)

    def checkpointer():
        return checkpointing.Checkpointer(
            tmp_path, keep_last=1, keep_best=1, best_metric="wer", async_save=False
        )

    first = checkpointer()
    for step, wer in ((1, 0.5), (2, 0.3), (3, 0.9)):
        first.save(step, state, {}, metrics={"wer": wer})
    first.close()
    resumed = checkpointer()  # a new process: the metrics are read back from disk
    resumed.save(4, state, {}, metrics={"wer": 0.8})
    resumed.close()
    assert _steps(tmp_path) == [2, 4]
    assert checkpointing.best_step(tmp_path).name == "2"
    assert checkpointing.best_step(tmp_path, mode="max").name == "4"


def test_best_step_of_a_run_without_metrics_is_its_latest(tmp_path):
    mesh = partitioning.make_mesh(MeshConfig(data=-1))
    state, _ = _sharded_state(_init_fn(), mesh)
    checkpointer = checkpointing.Checkpointer(tmp_path, keep_last=2, async_save=False)
    for step in (1, 2, 3):
        checkpointer.save(step, state, {})
    checkpointer.close()
    assert checkpointing.best_step(tmp_path).name == "3"
    with pytest.raises(FileNotFoundError, match="no finalised checkpoint"):
        checkpointing.best_step(tmp_path / "elsewhere")
