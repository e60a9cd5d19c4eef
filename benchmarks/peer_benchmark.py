"""Side by side on this CPU: our pre-training step vs HuggingFace's Wav2Vec2ConformerForPreTraining.

Both sides train the same encoder shape (width 256, 4 Conformer blocks, 4 heads, feed-forward
1024, depthwise kernel `--kernel`, no position encoding in attention) on a batch of `--batch`
random utterances of `--seconds` s at 16 kHz, and are timed in the same run, alternately, each
in its own process (so each one's peak memory is its own):

  1. step:  a full pre-training step, forward + backward + optimizer update.
     Ours: `models.wav2vec2` (log-mel, ConvSubsampling, Gumbel quantiser, span masking,
     Conformer, contrastive + diversity loss; Adam + clipping), or with `--objective best_rq`
     `models.best_rq` (BEST-RQ). Peer: wav2vec 2.0 (CNN feature encoder, Conformer,
     Gumbel quantiser, contrastive + diversity loss with `mask_time_indices` and
     `sampled_negative_indices` from transformers' `_compute_mask_indices` /
     `_sample_negative_indices`, drawn inside the step as ours draws its masks; AdamW +
     clipping). The peer's CNN is 'matched' by default: 7 conv layers of 96 channels with a
     total stride of 640 samples, i.e. the same 40 ms frames and about the same FLOPs as our
     log-mel + ConvSubsampling; `--peer_frontend default` uses wav2vec 2.0's own CNN (512
     channels, 20 ms frames: twice the encoder frames and ~25x the front-end FLOPs).
  2. stack: the 4 Conformer blocks alone, forward + backward (gradients of sum(y * g) for
     the parameters and the input) on identical [B, T', D] inputs, T' = our encoder frames.

Printed as one JSON object: per side, the median over `--rounds` rounds of each timing (each a
median of `--reps` calls), audio seconds per second, peak RSS, FLOPs per call and achieved
GFLOP/s; the per-round ratios ours / peer (median); and the machine's best dense matmul rate
measured in the same rounds (XLA 2-D dot and batched einsum in our process, torch 2-D matmul in
the peer's), the denominator of every utilisation figure. FLOPs: model FLOPs counted the same
way on both sides (`bigssl_jax.jobs.flops`; `_peer_step_flops`), with XLA's cost analysis (ours)
and `torch.utils.flop_counter.FlopCounterMode` (the peer's) printed as cross-checks.

`--profile` adds where our step spends its time: each part timed alone in our process in the
same rounds (log-mel; subsampling, FFN, attention, convolution module: forward + backward;
the optimizer update) as a share of the step, and what is left (block glue, the objective).
`--unrolled`, `--remat`, `--dtype` change our encoder; XLA flags come from XLA_FLAGS.

Needs the `bench` extra (torch, transformers). No hub access: the peer is built from a config
with random weights (HF_HUB_OFFLINE=1 is set).

    python benchmarks/peer_benchmark.py [--batch 8] [--seconds 4] [--rounds 5] [--profile]
"""

import argparse
import json
import multiprocessing
import os
import resource
import statistics
import time

SAMPLE_RATE = 16000
MODEL_DIM = 256
NUM_LAYERS = 4
NUM_HEADS = 4
FF_DIM = 1024
PEAK_SIZE = 2048
# The peer's CNN front ends: (channels, kernels, strides).
PEER_FRONTENDS = {
    "matched": ((96,) * 7, (10, 3, 3, 3, 3, 2, 4), (5, 2, 2, 2, 2, 2, 4)),
    "default": ((512,) * 7, (10, 3, 3, 3, 3, 2, 2), (5, 2, 2, 2, 2, 2, 2)),
}
PROFILE_PARTS = ("log_mel", "subsampling", "ffn", "attention", "conv", "optimizer")
# Calls of each part per step (blocks: 2 FFNs, 1 attention, 1 conv module each).
PROFILE_CALLS = {"ffn": 2 * NUM_LAYERS, "attention": NUM_LAYERS, "conv": NUM_LAYERS}


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _timed(fn, reps: int) -> float:
    """Median seconds of `reps` calls of fn (which blocks until its result is ready)."""
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _stack_inputs(batch: int, frames: int):
    """The identical [B, T', D] input and output cotangent both stacks get."""
    import numpy as np  # noqa: PLC0415

    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, frames, MODEL_DIM), dtype=np.float32)
    g = rng.standard_normal((batch, frames, MODEL_DIM), dtype=np.float32)
    return x, g


# ------------------------------------------------------------------------------------------------
# Our side (JAX)
# ------------------------------------------------------------------------------------------------


def _our_config(args):
    from bigssl_jax.models import encoder as encoder_lib  # noqa: PLC0415

    return encoder_lib.EncoderConfig(
        model_dim=MODEL_DIM,
        num_layers=NUM_LAYERS,
        num_heads=NUM_HEADS,
        ff_mult=FF_DIM // MODEL_DIM,
        conv_kernel_size=args.kernel,
        use_relative_position=False,
        subsampling_channels=128,
        dtype=args.dtype,
        scan_layers=not args.unrolled,
        remat_policy=args.remat,
    )


def _grad_fn(module, g, **kwargs):
    """jit of (params, x, rng) -> d sum(module(x) * g) / d(params, x)."""
    import jax  # noqa: PLC0415
    import jax.numpy as jnp  # noqa: PLC0415

    def loss(params, x, rng):
        y = module.apply({"params": params}, x, rngs={"dropout": rng}, **kwargs)
        y = y[0] if isinstance(y, tuple) else y
        return jnp.sum(y.astype(jnp.float32) * g)

    return jax.jit(jax.grad(loss, argnums=(0, 1)))


def _our_step_flops(args, config, model, num_frames: int) -> float:
    """Model FLOPs of our step (`bigssl_jax.jobs.flops`; wav2vec 2.0 terms as in
    `_peer_step_flops`)."""
    from bigssl_jax.jobs import flops  # noqa: PLC0415
    from bigssl_jax.layers import subsampling  # noqa: PLC0415

    if args.objective == "best_rq":
        counts = flops.best_rq_train_step_flops(config, model.objective, num_frames, args.batch)
        return counts["train_step"]
    objective = model.objective
    frames = subsampling.ConvSubsampling.output_frames(num_frames)
    codes = objective.num_groups * objective.num_codes
    forward = (
        2 * frames * MODEL_DIM * codes  # quantiser logits
        + 2 * frames * codes * objective.code_dim // objective.num_groups
        + 2 * frames * objective.code_dim * objective.code_dim  # target projection
        + 2 * frames * MODEL_DIM * objective.code_dim  # final projection
        + 2 * frames * (1 + objective.num_negatives) * objective.code_dim
    )
    encoder = flops.train_step_flops(config, num_frames, args.batch)["train_step"]
    return encoder + 3 * args.batch * forward


def _our_step(args, config, batch):
    """(run, info, holder): our jitted train step on `batch`; holder['state'] is its state."""
    import flax.linen as nn  # noqa: PLC0415
    import jax  # noqa: PLC0415

    from bigssl_jax import optimizers, train_step  # noqa: PLC0415
    from bigssl_jax.layers import frontend  # noqa: PLC0415
    from bigssl_jax.models import (
        best_rq,
        wav2vec2,  # noqa: PLC0415
    )

    wrapper = (
        wav2vec2.Wav2Vec2TrainModel if args.objective == "wav2vec2" else best_rq.BestRqTrainModel
    )
    model = wrapper(encoder=config)
    tx = optimizers.make_optimizer(optimizers.OptimizerConfig())
    state = jax.jit(lambda key: nn.unbox(train_step.init_state(model, tx, key, batch)))(
        jax.random.key(0)
    )
    start = time.perf_counter()
    compiled = (
        jax.jit(train_step.make_train_step(model), donate_argnums=(0,))
        .lower(state, batch, jax.random.key(1))
        .compile()
    )
    compile_s = time.perf_counter() - start
    holder = {"state": state}

    def run():
        holder["state"], metrics = compiled(holder["state"], batch, jax.random.key(1))
        jax.block_until_ready(metrics)

    num_frames = frontend.num_frames(batch["audio"].shape[1], frontend.LogMelConfig())
    info = {
        "objective": {
            "wav2vec2": "wav2vec 2.0 contrastive + diversity (models.wav2vec2)",
            "best_rq": "BEST-RQ (models.best_rq)",
        }[args.objective],
        "compile_s": round(compile_s, 1),
        "flops": _our_step_flops(args, config, model, num_frames),
        "xla_flops": compiled.cost_analysis()["flops"],
        "xla_temp_mib": round(compiled.memory_analysis().temp_size_in_bytes / 2**20),
        "params": sum(x.size for x in jax.tree.leaves(state.params)),
    }
    return run, info, holder


def _our_stack(args, config, frames):
    """(run, info): the ConformerStack forward + backward on the shared inputs."""
    import jax  # noqa: PLC0415
    import jax.numpy as jnp  # noqa: PLC0415

    from bigssl_jax.models import encoder as encoder_lib  # noqa: PLC0415

    x, g = (jnp.asarray(a) for a in _stack_inputs(args.batch, frames))
    paddings = jnp.zeros(x.shape[:2], jnp.float32)
    stack = encoder_lib.ConformerStack(config, NUM_LAYERS)
    params = stack.init(jax.random.key(0), x, paddings, train=False)["params"]
    grad = _grad_fn(stack, g, paddings=paddings, train=True)
    rng = jax.random.key(2)
    cost = grad.lower(params, x, rng).compile().cost_analysis()

    def run():
        jax.block_until_ready(grad(params, x, rng))

    forward = args.batch * NUM_LAYERS * _block_flops(frames, args.kernel)
    return run, {"flops": 3 * forward, "xla_flops": cost["flops"]}


def _our_profile(args, config, batch, holder):
    """{part: run} for each of PROFILE_PARTS, timed alone on the step's shapes."""
    import jax  # noqa: PLC0415
    import jax.numpy as jnp  # noqa: PLC0415
    import optax  # noqa: PLC0415

    from bigssl_jax import optimizers  # noqa: PLC0415
    from bigssl_jax.layers import attention, conformer, frontend, subsampling  # noqa: PLC0415

    dtype = config.compute_dtype
    log_mel = frontend.LogMelFrontend(frontend.LogMelConfig())
    mel_fn = jax.jit(lambda a, p: log_mel.apply({}, a, p))
    features, feature_paddings = mel_fn(batch["audio"], batch["audio_paddings"])
    frames = subsampling.ConvSubsampling.output_frames(features.shape[1])
    x = jnp.asarray(_stack_inputs(args.batch, frames)[0])
    pads = jnp.zeros(x.shape[:2], jnp.float32)
    head_dim = MODEL_DIM // NUM_HEADS
    modules = {
        "subsampling": (
            subsampling.ConvSubsampling(128, MODEL_DIM, dtype),
            features,
            {"paddings": feature_paddings},
        ),
        "ffn": (conformer.FeedForward(FF_DIM, 0.1, 0.1, dtype), x, {"train": True}),
        "attention": (
            attention.MultiHeadSelfAttention(NUM_HEADS, head_dim, dtype=dtype),
            x,
            {"paddings": pads},
        ),
        "conv": (
            conformer.ConvolutionModule(args.kernel, 0.1, dtype),
            x,
            {"paddings": pads, "train": True},
        ),
    }
    runs = {
        "log_mel": lambda: jax.block_until_ready(mel_fn(batch["audio"], batch["audio_paddings"]))
    }
    rng = jax.random.key(3)
    for name, (module, inputs, kwargs) in modules.items():
        params = module.init(jax.random.key(0), inputs, **kwargs)["params"]
        out = jax.eval_shape(
            lambda p, i, m=module, k=kwargs: m.apply({"params": p}, i, rngs={"dropout": rng}, **k),
            params,
            inputs,
        )
        out = out[0] if isinstance(out, tuple) else out
        fn = _grad_fn(module, jnp.ones(out.shape, jnp.float32), **kwargs)
        runs[name] = lambda fn=fn, p=params, i=inputs: jax.block_until_ready(fn(p, i, rng))

    tx = optimizers.make_optimizer(optimizers.OptimizerConfig())
    # A copy: the step donates (deletes) the state it is given.
    params = jax.tree.map(jnp.copy, holder["state"].params)
    opt_state = tx.init(params)

    def update(grads, opt_state, params):
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    update_fn = jax.jit(update)
    runs["optimizer"] = lambda: jax.block_until_ready(update_fn(params, opt_state, params))
    return runs


def _our_peak() -> dict:
    import matmul_peak  # noqa: PLC0415  (benchmarks/ is on sys.path)

    return matmul_peak.measure_xla(PEAK_SIZE, repeats=3)


def _our_worker(args, conn) -> None:
    """Builds our step and stack, then answers timing requests on `conn`."""
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    import jax  # noqa: PLC0415
    import jax.numpy as jnp  # noqa: PLC0415
    import numpy as np  # noqa: PLC0415

    from bigssl_jax.layers import frontend, subsampling  # noqa: PLC0415

    base_rss = _rss_mib()
    config = _our_config(args)
    samples = round(args.seconds * SAMPLE_RATE)
    rng = np.random.default_rng(0)
    batch = {
        "audio": jnp.asarray(0.1 * rng.standard_normal((args.batch, samples)), jnp.float32),
        "audio_paddings": jnp.zeros((args.batch, samples), jnp.float32),
    }
    step, step_info, holder = _our_step(args, config, batch)
    step()
    frames = subsampling.ConvSubsampling.output_frames(
        frontend.num_frames(samples, frontend.LogMelConfig())
    )
    runs = {"step": step, "peak": _our_peak}
    stack, stack_info = _our_stack(args, config, frames)
    if args.profile:
        runs.update(_our_profile(args, config, batch, holder))
    runs["stack"] = stack
    for run in runs.values():
        run()
    conn.send(
        {
            "frames": frames,
            "base_rss_mib": round(base_rss),
            "step": step_info,
            "stack": stack_info,
            "xla_flags": os.environ.get("XLA_FLAGS", ""),
            "jax": jax.__version__,
        }
    )
    _serve(conn, runs, args.reps)


def _serve(conn, runs: dict, reps: int) -> None:
    """Answers `task` with its median seconds (or the peak dict), until `None`."""
    while (task := conn.recv()) is not None:
        if task == "peak":
            conn.send({"result": runs[task](), "rss_mib": _rss_mib()})
        else:
            conn.send({"result": _timed(runs[task], reps), "rss_mib": _rss_mib()})


# ------------------------------------------------------------------------------------------------
# The peer (PyTorch, transformers)
# ------------------------------------------------------------------------------------------------


def _peer_model(args):
    from transformers import (  # noqa: PLC0415
        Wav2Vec2ConformerConfig,
        Wav2Vec2ConformerForPreTraining,
    )

    channels, kernels, strides = PEER_FRONTENDS[args.peer_frontend]
    config = Wav2Vec2ConformerConfig(
        hidden_size=MODEL_DIM,
        num_hidden_layers=NUM_LAYERS,
        num_attention_heads=NUM_HEADS,
        intermediate_size=FF_DIM,
        conv_depthwise_kernel_size=args.kernel,
        position_embeddings_type=None,
        conv_dim=channels,
        conv_kernel=kernels,
        conv_stride=strides,
        layerdrop=0.0,
        hidden_dropout=0.1,
        activation_dropout=0.1,
        attention_dropout=0.1,
        mask_time_prob=0.65,
        mask_time_length=10,
        num_negatives=100,
        codevector_dim=MODEL_DIM,
        proj_codevector_dim=MODEL_DIM,
    )
    return Wav2Vec2ConformerForPreTraining(config).train()


def _peer_step(args, model):
    """(run, info): one wav2vec 2.0 step: masks + negatives, forward, backward, AdamW."""
    import torch  # noqa: PLC0415
    from transformers.models.wav2vec2.modeling_wav2vec2 import (  # noqa: PLC0415
        _compute_mask_indices,
        _sample_negative_indices,
    )

    config = model.config
    samples = round(args.seconds * SAMPLE_RATE)
    audio = 0.1 * torch.randn(args.batch, samples, generator=torch.Generator().manual_seed(0))
    frames = int(model._get_feat_extract_output_lengths(torch.tensor(samples)))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.98))

    def run():
        mask = _compute_mask_indices(
            (args.batch, frames), config.mask_time_prob, config.mask_time_length, min_masks=2
        )
        negatives = _sample_negative_indices(
            (args.batch, frames), config.num_negatives, mask_time_indices=mask
        )
        optimizer.zero_grad(set_to_none=True)
        out = model(
            audio,
            mask_time_indices=torch.from_numpy(mask),
            sampled_negative_indices=torch.from_numpy(negatives),
        )
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 20.0)
        optimizer.step()

    return run, {
        "objective": "wav2vec 2.0 contrastive + diversity (Wav2Vec2ConformerForPreTraining)",
        "frames": frames,
        "flops": _peer_step_flops(config, samples, args.batch),
        "flop_counter_flops": _torch_flops(run),
        "params": sum(p.numel() for p in model.parameters()),
        "attn_implementation": config._attn_implementation,
    }


def _peer_stack(args, model, frames):
    """(run, info): the 4 Conformer layers, forward + backward, on the shared inputs."""
    import torch  # noqa: PLC0415

    x_np, g_np = _stack_inputs(args.batch, frames)
    x = torch.from_numpy(x_np).requires_grad_()
    g = torch.from_numpy(g_np)
    layers = model.wav2vec2_conformer.encoder.layers

    def run():
        layers.zero_grad(set_to_none=True)
        x.grad = None
        h = x
        for layer in layers:
            h = layer(h)
        (h * g).sum().backward()

    forward = args.batch * NUM_LAYERS * _block_flops(frames, args.kernel)
    return run, {"flops": 3 * forward, "flop_counter_flops": _torch_flops(run)}


def _torch_flops(fn) -> float:
    """FLOPs of fn as `FlopCounterMode` counts them (see `_peer_step_flops` for its errors)."""
    from torch.utils.flop_counter import FlopCounterMode  # noqa: PLC0415

    with FlopCounterMode(display=False) as counter:
        fn()
    return float(counter.get_total_flops())


def _block_flops(frames: int, kernel: int) -> float:
    """Forward FLOPs of one block over `frames` frames (`bigssl_jax.jobs.flops.block_flops`)."""
    from bigssl_jax.jobs import flops  # noqa: PLC0415
    from bigssl_jax.models import encoder as encoder_lib  # noqa: PLC0415

    config = encoder_lib.EncoderConfig(
        model_dim=MODEL_DIM,
        num_heads=NUM_HEADS,
        ff_mult=FF_DIM // MODEL_DIM,
        conv_kernel_size=kernel,
    )
    return sum(flops.block_flops(config, frames).values())


def _peer_step_flops(config, samples: int, batch: int) -> float:
    """Model FLOPs of one peer step, counted as `bigssl_jax.jobs.flops` counts ours.

    Matmuls and convolutions, backward = 2x forward (1x for the first CNN layer, whose input
    needs no gradient): the CNN, the feature projection, the blocks, the quantiser's logits
    and code-vector lookup, project_q / project_hid and the cosine similarities with the
    1 + num_negatives candidates. (`FlopCounterMode` in torch 2.13 counts a depthwise
    convolution's backward as a dense one, 3.2 GFLOPs per block here, and SDPA on CPU as 0.)
    """
    length, channels, total = samples, 1, 0.0
    for index, (width, kernel, stride) in enumerate(
        zip(config.conv_dim, config.conv_kernel, config.conv_stride, strict=True)
    ):
        length = (length - kernel) // stride + 1
        total += (2 if index == 0 else 3) * 2 * length * kernel * channels * width
        channels = width
    codes = config.num_codevector_groups * config.num_codevectors_per_group
    forward = (
        2 * length * channels * MODEL_DIM  # feature projection
        + NUM_LAYERS * _block_flops(length, config.conv_depthwise_kernel_size)
        + 2 * length * channels * codes  # quantiser logits
        + 2 * length * codes * config.codevector_dim // config.num_codevector_groups
        + 2 * length * config.codevector_dim * config.proj_codevector_dim  # project_q
        + 2 * length * MODEL_DIM * config.proj_codevector_dim  # project_hid
        + 2 * length * (1 + config.num_negatives) * config.proj_codevector_dim
    )
    return batch * (total + 3 * forward)


def _torch_peak() -> dict:
    import torch  # noqa: PLC0415

    a = torch.randn(PEAK_SIZE, PEAK_SIZE)
    b = torch.randn(PEAK_SIZE, PEAK_SIZE)
    seconds = min(_timed(lambda: a @ b, 1) for _ in range(4))
    return {"torch_matmul_2d": 2 * PEAK_SIZE**3 / seconds / 1e9}


def _peer_worker(args, frames, conn) -> None:
    """Builds the peer's step and stack, then answers timing requests on `conn`."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    import torch  # noqa: PLC0415
    import transformers  # noqa: PLC0415

    torch.set_num_threads(os.cpu_count())
    base_rss = _rss_mib()
    model = _peer_model(args)
    step, step_info = _peer_step(args, model)
    stack, stack_info = _peer_stack(args, model, frames)
    runs = {"step": step, "stack": stack, "peak": _torch_peak}
    for run in runs.values():
        run()
    conn.send(
        {
            "frames": step_info.pop("frames"),
            "base_rss_mib": round(base_rss),
            "step": step_info,
            "stack": stack_info,
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "threads": torch.get_num_threads(),
        }
    )
    _serve(conn, runs, args.reps)


# ------------------------------------------------------------------------------------------------
# The comparison
# ------------------------------------------------------------------------------------------------


def _start(ctx, target, *args):
    parent, child = ctx.Pipe()
    process = ctx.Process(target=target, args=(*args, child), daemon=True)
    process.start()
    return process, parent


def _rounds(args, conns: dict) -> dict:
    """{side: {task: [per-round result]}}, sides asked alternately, first side swapped per round."""
    tasks = ["peak", "step", "stack"]
    results = {side: {task: [] for task in tasks} for side in conns}
    results["ours"].update({part: [] for part in PROFILE_PARTS if args.profile})
    for index in range(args.rounds):
        order = list(conns) if index % 2 == 0 else list(conns)[::-1]
        for task in tasks:
            for side in order:
                conns[side].send(task)
                results[side][task].append(conns[side].recv())
        for part in PROFILE_PARTS if args.profile else ():
            conns["ours"].send(part)
            results["ours"][part].append(conns["ours"].recv())
    return results


def _side_summary(args, info: dict, results: dict, peak: float) -> dict:
    step_s = statistics.median(r["result"] for r in results["step"])
    stack_s = statistics.median(r["result"] for r in results["stack"])
    summary = {
        "encoder_frames": info["frames"],
        "step": {
            **{k: v for k, v in info["step"].items() if k != "flops"},
            "step_s": round(step_s, 4),
            "audio_seconds_per_second": round(args.batch * args.seconds / step_s, 1),
            "gflops_per_step": round(info["step"]["flops"] / 1e9, 2),
            "gflops_per_second": round(info["step"]["flops"] / step_s / 1e9, 1),
            "fraction_of_peak": round(info["step"]["flops"] / step_s / 1e9 / peak, 3),
            "peak_rss_mib": round(results["step"][0]["rss_mib"]),
            "rss_growth_mib": round(results["step"][0]["rss_mib"] - info["base_rss_mib"]),
        },
        "stack": {
            **{k: v for k, v in info["stack"].items() if k != "flops"},
            "stack_s": round(stack_s, 4),
            "gflops_per_call": round(info["stack"]["flops"] / 1e9, 3),
            "gflops_per_second": round(info["stack"]["flops"] / stack_s / 1e9, 1),
            "fraction_of_peak": round(info["stack"]["flops"] / stack_s / 1e9 / peak, 3),
        },
    }
    for task in ("step", "stack"):
        for key in ("xla_flops", "flop_counter_flops"):
            if key in summary[task]:
                gflops = round(summary[task].pop(key) / 1e9, 2)
                summary[task][key.replace("flops", "gflops")] = gflops
    return summary


def _profile_summary(results: dict, step_s: float) -> dict:
    """Median ms of each part, ms per step (x calls per step) and share of the step."""
    profile = {}
    for part in PROFILE_PARTS:
        ms = 1e3 * statistics.median(r["result"] for r in results[part])
        calls = PROFILE_CALLS.get(part, 1)
        profile[part] = {
            "ms_per_call": round(ms, 2),
            "calls_per_step": calls,
            "share_of_step": round(calls * ms / 1e3 / step_s, 3),
        }
    stack_ms = 1e3 * statistics.median(r["result"] for r in results["stack"])
    profile["stack"] = {
        "ms_per_call": round(stack_ms, 2),
        "share_of_step": round(stack_ms / 1e3 / step_s, 3),
    }
    shares = {k: v["share_of_step"] for k, v in profile.items()}
    # What the parts timed alone leave: block glue (residuals, LayerNorms, scan) ...
    profile["blocks_minus_modules_share"] = round(
        shares["stack"] - shares["ffn"] - shares["attention"] - shares["conv"], 3
    )
    # ... and the objective: masking, targets / quantiser, head, loss.
    profile["rest_of_step_share"] = round(
        1 - shares["log_mel"] - shares["subsampling"] - shares["stack"] - shares["optimizer"], 3
    )
    return profile


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--kernel", type=int, default=31, help="depthwise kernel (odd: HF)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--reps", type=int, default=3, help="timed calls per round (median)")
    parser.add_argument("--objective", choices=("wav2vec2", "best_rq"), default="wav2vec2")
    parser.add_argument("--peer_frontend", choices=sorted(PEER_FRONTENDS), default="matched")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    parser.add_argument("--remat", default="none", help="our remat policy")
    parser.add_argument("--unrolled", action="store_true", help="our blocks in a Python loop")
    parser.add_argument("--no_peer", action="store_true", help="time our side only")
    parser.add_argument("--profile", action="store_true", help="time each part of our step")
    args = parser.parse_args()

    ctx = multiprocessing.get_context("spawn")
    processes, conns = {}, {}
    processes["ours"], conns["ours"] = _start(ctx, _our_worker, args)
    infos = {"ours": conns["ours"].recv()}
    if not args.no_peer:
        processes["peer"], conns["peer"] = _start(ctx, _peer_worker, args, infos["ours"]["frames"])
        infos["peer"] = conns["peer"].recv()
    results = _rounds(args, conns)
    for conn in conns.values():
        conn.send(None)
    for process in processes.values():
        process.join()

    peaks = {}
    for side in conns:
        for name in results[side]["peak"][0]["result"]:
            peaks[name] = round(
                statistics.median(r["result"][name] for r in results[side]["peak"]), 1
            )
    peak = max(peaks.values())
    report = {
        "cpus": os.cpu_count(),
        "load_average_1min": round(os.getloadavg()[0], 1),
        "batch": args.batch,
        "audio_seconds_per_utterance": args.seconds,
        "encoder": {
            "model_dim": MODEL_DIM,
            "num_layers": NUM_LAYERS,
            "num_heads": NUM_HEADS,
            "ff_dim": FF_DIM,
            "conv_kernel": args.kernel,
            "attention_position": None,
        },
        "ours_options": {"dtype": args.dtype, "remat": args.remat, "scan": not args.unrolled},
        "peer_frontend": dict(
            zip(("channels", "kernels", "strides"), PEER_FRONTENDS[args.peer_frontend], strict=True)
        ),
        "rounds": args.rounds,
        "reps_per_round": args.reps,
        "matmul_peak_gflops": peaks,
        "peak_gflops": peak,
        "versions": {
            k: infos[s][k] for s in infos for k in ("jax", "torch", "transformers") if k in infos[s]
        },
        "xla_flags": infos["ours"]["xla_flags"],
    }
    for side in conns:
        report[side] = _side_summary(args, infos[side], results[side], peak)
    if not args.no_peer:
        report["peer"]["threads"] = infos["peer"]["threads"]
        ratios = {}
        for task in ("step", "stack"):
            per_round = [
                p["result"] / o["result"]
                for o, p in zip(results["ours"][task], results["peer"][task], strict=True)
            ]
            ratios[f"{task}_speed_ours_over_peer"] = round(statistics.median(per_round), 2)
            ratios[f"{task}_per_round"] = [round(r, 2) for r in per_round]
        report["ratios"] = ratios
    if args.profile:
        report["profile"] = _profile_summary(results["ours"], report["ours"]["step"]["step_s"])
    print(json.dumps(report))


if __name__ == "__main__":
    main()
