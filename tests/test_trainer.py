"""The shared trainer: accumulation, non-finite guard, resume after SIGKILL, SIGTERM saves.

A tiny regression model (`ToyModel`, dropout so the step rng matters) and a deterministic
numpy batch iterator with `get_state` / `set_state` keep these fast; `bigssl train` with the
BEST-RQ smoke experiment is run end to end at the bottom. Run as a script, this file trains
the toy model (the subprocess of the SIGKILL test):

    python tests/test_trainer.py MODEL_DIR NUM_STEPS KILL_AT_STEP
"""

import dataclasses
import functools
import os
import pathlib
import signal
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bigssl_jax import checkpointing, optimizers, partitioning, train_step, trainer
from bigssl_jax.models import base
from bigssl_jax.models import encoder as encoder_lib

REPO = pathlib.Path(__file__).resolve().parents[1]
FEATURES, BATCH = 16, 8


class _Net(nn.Module):
    """y = v . dropout(tanh(x W)); W [F, 8] ('embed', 'mlp'), v [8] ('mlp',)."""

    @nn.compact
    def __call__(self, x, train):
        init = nn.initializers.normal(0.3)
        w = self.param("w", nn.with_logical_partitioning(init, ("embed", "mlp")), (x.shape[-1], 8))
        v = self.param("v", nn.with_logical_partitioning(init, ("mlp",)), (8,))
        hidden = nn.Dropout(0.2, deterministic=not train)(jnp.tanh(x @ w))
        return hidden @ v


class ToyModel:
    """Weighted squared error of `_Net`; the loss weight is the batch's total row weight."""

    rng_streams = ("dropout",)

    def net(self) -> nn.Module:
        return _Net()

    def init_variables(self, rng, batch):
        return dict(self.net().init(rng, jnp.zeros(batch["x"].shape), train=False))

    def loss(self, variables, batch, rng, *, step, train):
        del step
        rngs = base.split_rngs(rng, self.rng_streams)
        pred = self.net().apply(variables, batch["x"], train, rngs=rngs)
        weight = jnp.sum(batch["weights"])
        loss = jnp.sum(batch["weights"] * jnp.square(pred - batch["y"])) / jnp.maximum(weight, 1.0)
        return loss, {base.LOSS_WEIGHT: weight}


def toy_batch(index: int, nan: bool = False) -> dict:
    rng = np.random.default_rng(index)
    x = rng.standard_normal((BATCH, FEATURES)).astype(np.float32)
    if nan:
        x[0, 0] = np.nan
    weights = np.ones(BATCH, np.float32)
    weights[index % BATCH] = 0.0  # a padded row
    return {"x": x, "y": x[:, 0] * 0.5 - x[:, 1], "weights": weights}


class ToyIterator:
    """Batch i is `toy_batch(i)` (NaN from `nan_from` on); the position is saveable."""

    def __init__(self, nan_from: int | None = None):
        self.position, self.nan_from = 0, nan_from

    def __iter__(self):
        return self

    def __next__(self):
        self.position += 1
        nan = self.nan_from is not None and self.position - 1 >= self.nan_from
        return toy_batch(self.position - 1, nan)

    def get_state(self):
        return {"position": self.position}

    def set_state(self, state):
        self.position = state["position"]


OPTIMIZER = optimizers.OptimizerConfig(name="adam", peak_lr=1e-2, warmup_steps=2, clip_norm=1.0)


def _config(num_steps, **overrides):
    settings = dict(num_steps=num_steps, log_every=2, checkpoint_every=2, keep_last=2)
    return trainer.TrainerConfig(**{**settings, **overrides})


def _train(
    model_dir, num_steps, *, hooks=(), nan_from=None, model=None, optimizer=OPTIMIZER, **overrides
):
    mesh = partitioning.make_mesh(partitioning.MeshConfig(data=-1))
    return trainer.train(
        model=model or ToyModel(),
        optimizer=optimizer,
        config=_config(num_steps, **overrides),
        mesh=mesh,
        train_iter=ToyIterator(nan_from),
        model_dir=model_dir,
        eval_iter_fn=lambda: iter([toy_batch(1000), toy_batch(1001)]),
        hooks=hooks,
    )


def _saved_steps(model_dir) -> list[int]:
    """Finalised steps (Orbax renames a step's directory to its number when complete)."""
    directory = checkpointing.checkpoint_dir(model_dir)
    return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit())


def _params(state):
    return jax.tree.map(np.asarray, state.params)


# ---------------------------------------------------------------------------------------
# The pure step.
# ---------------------------------------------------------------------------------------


def _state(tx):
    init_fn = trainer._state_factory(ToyModel(), tx, toy_batch(0))
    return nn.unbox(init_fn(jax.random.key(0)))


def test_accumulating_microbatches_equals_one_big_batch():
    tx = optimizers.make_optimizer(OPTIMIZER)
    model = ToyModel()
    batch = jax.tree.map(jnp.asarray, toy_batch(3))
    batch["weights"] = jnp.asarray([1, 0, 2, 1, 0.5, 1, 0, 3], jnp.float32)  # unequal weights
    eval_model = _NoDropout(model)
    big, big_metrics = jax.jit(train_step.make_train_step(eval_model))(
        _state(tx), batch, jax.random.key(1)
    )
    small, small_metrics = jax.jit(train_step.make_train_step(eval_model, microbatches=4))(
        _state(tx), batch, jax.random.key(1)
    )
    np.testing.assert_allclose(small_metrics["loss"], big_metrics["loss"], rtol=1e-6)
    np.testing.assert_allclose(small_metrics["grad_norm"], big_metrics["grad_norm"], rtol=1e-5)
    assert float(small_metrics[base.LOSS_WEIGHT]) == float(jnp.sum(batch["weights"]))
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7),
        _params(small),
        _params(big),
    )


class _NoDropout:
    """The model in eval mode for the loss (so microbatch rngs do not matter)."""

    rng_streams = ToyModel.rng_streams

    def __init__(self, model):
        self.model = model

    def init_variables(self, rng, batch):
        return self.model.init_variables(rng, batch)

    def loss(self, variables, batch, rng, *, step, train):
        return self.model.loss(variables, batch, rng, step=step, train=False)


def test_nonfinite_step_is_skipped_and_state_unchanged():
    tx = optimizers.make_optimizer(OPTIMIZER)
    step = jax.jit(train_step.make_train_step(ToyModel()))
    state = _state(tx)
    before = jax.tree.map(np.asarray, state)
    bad = jax.tree.map(jnp.asarray, toy_batch(0, nan=True))
    after, metrics = step(state, bad, jax.random.key(0))
    assert float(metrics[train_step.NONFINITE]) == 1.0
    jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, after), before)
    after, metrics = step(after, jax.tree.map(jnp.asarray, toy_batch(1)), jax.random.key(0))
    assert float(metrics[train_step.NONFINITE]) == 0.0 and int(after.step) == 1


OVERFLOWING = dataclasses.replace(OPTIMIZER, peak_lr=1e39)  # inf in float32


def test_an_update_that_overflows_is_skipped_though_loss_and_gradient_are_finite():
    step = jax.jit(train_step.make_train_step(ToyModel()))
    state = _state(optimizers.make_optimizer(OVERFLOWING))
    before = jax.tree.map(np.asarray, state)
    after, metrics = step(state, jax.tree.map(jnp.asarray, toy_batch(1)), jax.random.key(0))
    assert np.isfinite(float(metrics["loss"])) and np.isfinite(float(metrics["grad_norm"]))
    assert float(metrics[train_step.NONFINITE]) == 1.0
    jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, after), before)


# ---------------------------------------------------------------------------------------
# The loop.
# ---------------------------------------------------------------------------------------


def test_train_logs_evaluates_and_checkpoints(tmp_path):
    result = _train(tmp_path, 6, eval_every=3)
    assert result.step == 6 and not result.preempted
    assert set(result.eval_metrics) >= {"loss", base.LOSS_WEIGHT}
    assert _saved_steps(tmp_path) == [4, 6]
    assert list(tmp_path.glob("events.out.tfevents.*"))


def test_eval_loss_is_the_whole_sets_mean_weighted_by_loss_weight():
    state = _state(optimizers.make_optimizer(OPTIMIZER))
    first, second = toy_batch(0), toy_batch(1)
    second["weights"][: BATCH - 2] = 0.0  # a mostly padded last batch weighs 2 rows, not 1
    mesh = partitioning.make_mesh(partitioning.MeshConfig(data=-1))
    eval_step = jax.jit(train_step.make_eval_step(ToyModel()))
    values = trainer.evaluate(eval_step, state, iter([first, second]), mesh, jax.random.key(0), 5)
    whole = {k: np.concatenate([first[k], second[k]]) for k in first}
    loss, metrics = ToyModel().loss(
        {"params": state.params}, whole, jax.random.key(0), step=0, train=False
    )
    np.testing.assert_allclose(values["loss"], loss, rtol=1e-5)
    assert values[base.LOSS_WEIGHT] == (float(metrics[base.LOSS_WEIGHT]) / 2)


def test_consecutive_nonfinite_steps_stop_with_finite_checkpoints(tmp_path):
    with pytest.raises(trainer.NonFiniteError, match="3 consecutive steps"):
        _train(tmp_path, 20, nan_from=5, max_consecutive_nonfinite=3, checkpoint_every=1)
    assert _saved_steps(tmp_path)[-1] == 5
    meta = checkpointing.Checkpointer(tmp_path, keep_last=10).restore_meta(5)
    assert meta["input"] == {"position": 5} and meta["nonfinite_total"] == 0
    restored = checkpointing.restore_from(tmp_path, None)
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(restored))


def test_overflowing_updates_stop_the_run_and_are_never_saved(tmp_path):
    with pytest.raises(trainer.NonFiniteError, match="No checkpoint was saved"):
        _train(tmp_path, 20, optimizer=OVERFLOWING, max_consecutive_nonfinite=3, checkpoint_every=1)
    assert not checkpointing.checkpoint_dir(tmp_path).exists() or _saved_steps(tmp_path) == []


def test_sigterm_saves_the_current_step_and_stops(tmp_path):
    def send_sigterm(step, state):
        if step == 3:
            os.kill(os.getpid(), signal.SIGTERM)

    result = _train(tmp_path, 10, hooks=[send_sigterm], checkpoint_every=100)
    assert result.preempted and result.step == 3
    assert _saved_steps(tmp_path) == [3]
    assert checkpointing.Checkpointer(tmp_path).restore_meta(3)["input"] == {"position": 3}
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL


def _init_from(model_dir, checkpoint, model, scopes=()):
    """A 0-step run of `model` whose params come from `checkpoint` (only `scopes` if given)."""
    return _train(
        model_dir,
        0,
        model=model,
        init_checkpoint=str(checkpoint),
        init_params_only=True,
        init_params_scopes=scopes,
    )


def test_init_checkpoint_whole_state_or_params_only(tmp_path):
    first = _train(tmp_path / "first", 2)
    seen = {}

    def record(step, state):
        seen.setdefault("start", step)

    whole = _train(tmp_path / "whole", 3, init_checkpoint=str(tmp_path / "first"), hooks=[record])
    assert seen["start"] == 3 and whole.step == 3  # continued from step 2
    params_only = _init_from(tmp_path / "params", tmp_path / "first", ToyModel())
    assert int(params_only.state.step) == 0
    jax.tree.map(np.testing.assert_array_equal, _params(params_only.state), _params(first.state))


def test_init_params_scopes_take_only_those_subtrees(tmp_path):
    first = _params(_train(tmp_path / "first", 2).state)
    fresh = _params(_train(tmp_path / "fresh", 0).state)
    partial = _init_from(tmp_path / "partial", tmp_path / "first", ToyModel(), ("w",))
    params = _params(partial.state)
    np.testing.assert_array_equal(params["w"], first["w"])
    np.testing.assert_array_equal(params["v"], fresh["v"])
    assert not np.array_equal(first["v"], fresh["v"])
    with pytest.raises(ValueError, match="init_params_scopes \\['head'\\]"):
        _init_from(tmp_path / "bad", tmp_path / "first", ToyModel(), ("head",))


def test_a_run_with_an_ema_evaluates_it_and_runs_initialised_from_it_start_from_it(tmp_path):
    ema_optimizer = dataclasses.replace(OPTIMIZER, ema_decay=0.5)
    result = _train(tmp_path / "ema", 4, optimizer=ema_optimizer, eval_every=4)
    ema = optimizers.ema_params(result.state.opt_state)
    assert not np.allclose(ema["w"], result.state.params["w"])
    whole = {k: np.concatenate([toy_batch(1000)[k], toy_batch(1001)[k]]) for k in toy_batch(0)}

    def eval_loss(params):
        rng = jax.random.key(0)
        return float(ToyModel().loss({"params": params}, whole, rng, step=0, train=False)[0])

    np.testing.assert_allclose(result.eval_metrics["loss"], eval_loss(ema), rtol=1e-5)
    assert abs(eval_loss(ema) - eval_loss(result.state.params)) > 1e-4  # so the check tells
    student = _init_from(tmp_path / "student", tmp_path / "ema", ToyModel())
    jax.tree.map(
        np.testing.assert_array_equal, _params(student.state), jax.tree.map(np.asarray, ema)
    )


class _EncoderNet(nn.Module):
    """A head on the mean of a Conformer encoder (top-level params 'encoder', 'head') over
    the toy inputs read as 8 frames x 2 features."""

    config: encoder_lib.EncoderConfig

    @nn.compact
    def __call__(self, x, train):
        features = x.reshape(x.shape[0], 8, 2)
        paddings = jnp.zeros(features.shape[:2])
        encoded, _ = encoder_lib.ConformerEncoder(self.config, name="encoder")(
            features, paddings, train=train
        )
        return nn.Dense(1, name="head")(encoded.mean(axis=1))[:, 0]


class ToyEncoderModel(encoder_lib.RestagesEncoderParams, ToyModel):
    """`ToyModel`'s loss on `_EncoderNet`; `encoder` is its `EncoderConfig`, restaged on
    restore as in the ASR and pre-training models."""

    def __init__(self, encoder):
        self.encoder = encoder

    def net(self) -> nn.Module:
        return _EncoderNet(self.encoder)


def test_init_params_scopes_regroup_an_encoder_saved_with_other_cuts(tmp_path):
    # w2v-BERT saves its encoder cut after the contrastive module; fine-tuning has no cut.
    cut = encoder_lib.EncoderConfig(
        input_dim=2, model_dim=8, num_layers=3, num_heads=2, conv_kernel_size=3,
        subsampling_channels=2, split_layers=(1,),
    )  # fmt: skip
    plain = ToyEncoderModel(dataclasses.replace(cut, split_layers=()))
    pretrained = _params(_train(tmp_path / "cut", 2, model=ToyEncoderModel(cut)).state)
    fresh = _params(_train(tmp_path / "fresh", 0, model=plain).state)
    tuned = _init_from(tmp_path / "tuned", tmp_path / "cut", plain, ("encoder",))
    params = _params(tuned.state)
    expected = encoder_lib.restage_params(pretrained["encoder"], plain.encoder)
    jax.tree.map(np.testing.assert_array_equal, params["encoder"], expected)
    jax.tree.map(np.testing.assert_array_equal, params["head"], fresh["head"])

    wider = ToyEncoderModel(dataclasses.replace(plain.encoder, model_dim=16))
    message = "cut: params\\['encoder'\\].* has shape \\(3, 2, 4\\); this model's is \\(3, 2, 8\\)"
    with pytest.raises(ValueError, match=message):
        _init_from(tmp_path / "wider", tmp_path / "cut", wider, ("encoder",))
    _train(tmp_path / "toy", 2)  # params 'w' and 'v' only
    with pytest.raises(ValueError, match="toy: params\\['encoder'\\].* is absent"):
        _init_from(tmp_path / "all_from_toy", tmp_path / "toy", plain)
    with pytest.raises(ValueError, match="init_params_scopes \\['encoder'\\] are not in the"):
        _init_from(tmp_path / "from_toy", tmp_path / "toy", plain, ("encoder",))


class ToyStatisticsModel(ToyModel):
    """`ToyModel` on inputs centred by a fitted mean (a `base.StatisticsModel`)."""

    statistics_batches = 2

    def init_variables(self, rng, batch):
        return {**super().init_variables(rng, batch), "stats": {"mean": jnp.zeros(FEATURES)}}

    def statistics_features(self, variables, batch):
        return batch["x"]

    def fit_statistics(self, features):
        return {"stats": {"mean": features.mean(axis=0)}}

    def loss(self, variables, batch, rng, *, step, train):
        centred = {**batch, "x": batch["x"] - variables["stats"]["mean"]}
        return super().loss({"params": variables["params"]}, centred, rng, step=step, train=train)


def test_statistics_are_fitted_on_a_fresh_start_only_and_the_data_position_kept(tmp_path):
    mesh = partitioning.make_mesh(partitioning.MeshConfig(data=-1))
    iterators = []

    def train(model_dir, num_steps, **overrides):
        iterators.append(ToyIterator())
        return trainer.train(
            model=ToyStatisticsModel(),
            optimizer=OPTIMIZER,
            config=_config(num_steps, **overrides),
            mesh=mesh,
            train_iter=iterators[-1],
            model_dir=model_dir,
        )

    first = train(tmp_path / "run", 3)
    real_rows = [b["x"][b["weights"] > 0] for b in (toy_batch(0), toy_batch(1))]
    expected = np.concatenate(real_rows).mean(axis=0)
    np.testing.assert_allclose(first.state.model_state["stats"]["mean"], expected, rtol=1e-6)
    assert iterators[-1].position == 3  # the fit's batches were put back and trained on
    # Resuming keeps the checkpointed statistics (no refit on the resumed position's batches).
    resumed = train(tmp_path / "run", 5)
    assert resumed.step == 5 and iterators[-1].position == 5
    np.testing.assert_array_equal(resumed.state.model_state["stats"]["mean"], expected)
    # A params-only init from another run fits afresh on this run's data.
    iterators.clear()
    shifted = ToyIterator()
    shifted.position = 4
    again = trainer.train(
        model=ToyStatisticsModel(),
        optimizer=OPTIMIZER,
        config=_config(0, init_checkpoint=str(tmp_path / "run"), init_params_only=True),
        mesh=mesh,
        train_iter=shifted,
        model_dir=tmp_path / "init",
    )
    real_rows = [b["x"][b["weights"] > 0] for b in (toy_batch(4), toy_batch(5))]
    np.testing.assert_allclose(
        again.state.model_state["stats"]["mean"], np.concatenate(real_rows).mean(0), rtol=1e-6
    )


def _run_script(model_dir, num_steps, kill_at=0):
    env = {
        **os.environ,
        "JAX_PLATFORMS": "cpu",
        "XLA_FLAGS": "--xla_force_host_platform_device_count=8",
    }
    command = [sys.executable, __file__, str(model_dir), str(num_steps), str(kill_at)]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)


def test_resume_after_sigkill_gives_the_uninterrupted_parameters(tmp_path):
    straight = _train(tmp_path / "straight", 9)
    killed = _run_script(tmp_path / "killed", 9, kill_at=5)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    saved = _saved_steps(tmp_path / "killed")
    assert saved and max(saved) <= 4  # step 2, and step 4 if its write finished in time
    resumed = _train(tmp_path / "killed", 9)
    assert resumed.step == straight.step == 9
    # Equal up to float32 round-off (a restored program may fuse differently: ~1 ulp).
    close = functools.partial(np.testing.assert_allclose, rtol=1e-6, atol=1e-7)
    jax.tree.map(close, _params(resumed.state), _params(straight.state))
    jax.tree.map(
        close,
        jax.tree.map(np.asarray, resumed.state.opt_state),
        jax.tree.map(np.asarray, straight.state.opt_state),
    )


# ---------------------------------------------------------------------------------------
# Gin experiments and `bigssl train`.
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, corpus, num_layers, model_dim, num_steps",
    [
        ("experiments/pretrain_best_rq_smoke.gin", "embedded_tiny", 2, 64, 4),
        ("experiments/pretrain_best_rq_small.gin", "embedded_small", 4, 144, 1500),
        ("experiments/pretrain_wav2vec2_small.gin", "embedded_small", 4, 144, 2500),
        ("experiments/pretrain_w2v_bert_small.gin", "embedded_small", 4, 144, 2500),
        ("experiments/finetune_ctc_small.gin", "embedded_small", 4, 144, 4000),
        ("experiments/finetune_rnnt_small.gin", "embedded_small", 4, 144, 4000),
    ],
)
def test_experiment_gins_build(name, corpus, num_layers, model_dim, num_steps):
    import gin

    from bigssl_jax import configurables, gin_utils

    gin.clear_config()
    try:
        gin_utils.parse([name])
        experiment = configurables.ExperimentConfig()
        trainer_config = configurables.TrainerConfig()
        optimizer = configurables.OptimizerConfig()
        with gin.config_scope("train"):
            train_input = configurables.InputConfig(task="any")
    finally:
        gin.clear_config()
    assert experiment.corpus == corpus and isinstance(experiment.model, base.TrainModel)
    encoder = experiment.model.encoder
    assert (encoder.num_layers, encoder.model_dim) == (num_layers, model_dim)
    assert encoder.use_relative_position
    assert trainer_config.num_steps == num_steps
    assert optimizer.name == "adam" and optimizer.decay == "rsqrt" and optimizer.b2 == 0.98
    assert train_input.batch_size % 8 == 0


def test_bigssl_train_smoke_experiment_end_to_end(tmp_path):
    from bigssl_tasks import toy_corpus

    toy_corpus.write_toy_corpus(
        tmp_path / "data",
        "embedded_tiny",
        splits={"unlabeled": (16, False), "dev": (8, True)},
        num_shards=1,
        max_seconds=1.5,
    )
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""}
    command = [
        os.path.join(os.path.dirname(sys.executable), "bigssl"),
        "train",
        "--gin_file=experiments/pretrain_best_rq_smoke.gin",
        "--gin_bindings=TrainerConfig.num_steps = 2",
        "--gin_bindings=ExperimentConfig.eval_split = None",  # eval: see the loop test
        f"--model_dir={tmp_path / 'run'}",
        f"--data_dir={tmp_path / 'data'}",
    ]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "train: done at step 2" in done.stdout
    run = tmp_path / "run"
    assert _saved_steps(run) == [2]
    assert list(run.glob("events.out.tfevents.*"))
    operative = (run / "operative_config.gin").read_text()
    assert "BestRqTrainModel.encoder" in operative and "TrainerConfig.num_steps = 2" in operative


def _main(model_dir: str, num_steps: str, kill_at: str) -> None:
    def kill(step, state):
        if step == int(kill_at):
            os.kill(os.getpid(), signal.SIGKILL)

    _train(model_dir, int(num_steps), hooks=[kill])


if __name__ == "__main__":
    _main(*sys.argv[1:])
