"""Defaults chosen by platform, not by editing gins: what a GPU run gets unless told otherwise.

    platform_defaults.set_xla_flags(os.environ)     # at the entry point, before JAX starts
    defaults = platform_defaults.for_platform(jax.default_backend())
    model = platform_defaults.apply_to_model(model, defaults, explicit={"dtype"})

On CPU and TPU nothing changes (`NONE`): the encoder keeps its config, and XLA its flags. On
a GPU (`GPU`):

  * bfloat16 compute (`EncoderConfig.dtype`): parameters, optimizer state, LayerNorm
    statistics, the softmax and the losses stay float32; matmuls run on the tensor cores at
    their bf16 rate (on an H100, twice the TF32 rate and ~15x full float32).
  * cuDNN's fused (flash) attention (`EncoderConfig.attention_implementation = 'cudnn'`,
    through `jax.nn.dot_product_attention`): it takes our learned relative-position bias as
    its additive bias (and returns its gradient), padding as key lengths; see
    `layers.attention` for what it requires. It needs bf16 or fp16 inputs, so it is chosen
    only with bf16 compute.
  * remat 'dots_saveable' (`EncoderConfig.remat_policy`): keep every matmul output, recompute
    the elementwise work (swish, GLU, LayerNorm, the depthwise taps) in the backward pass, as
    MaxText's 'minimal' policy does; XL's activations at a useful batch would not fit 80 GB
    without remat, and the recomputed work is memory-bound and cheap on a GPU.
  * XLA flags (`GPU_XLA_FLAGS`, what MaxText's and NVIDIA's JAX-Toolbox GPU recipes set):
    the latency-hiding scheduler (overlaps collectives with compute), cuBLAS rather than
    Triton for GEMMs, double-buffered while loops (the scanned block stack) and pipelined
    all-gather / reduce-scatter / all-reduce (FSDP's collectives across layers).

A field the gin (or a benchmark flag) sets explicitly keeps its value (`explicit`). XLA
reads `XLA_FLAGS` once, when the first backend starts, so `set_xla_flags` runs at the entry
point before anything initialises JAX; it detects a GPU from `JAX_PLATFORMS`, or, when that
is unset, from an installed CUDA plugin (`pip install -e ".[gpu]"`), without starting a
backend. Flags already in `XLA_FLAGS` win over ours.

This module imports neither JAX nor the models, so the entry point can import it first.
"""

import dataclasses
import importlib.util
import os
from collections.abc import Collection, MutableMapping
from typing import Any

ENCODER_FIELDS = ("dtype", "attention_implementation", "remat_policy")
CUDA_PLUGINS = ("jax_cuda12_plugin", "jax_cuda13_plugin")
GPU_XLA_FLAGS = (
    "--xla_gpu_enable_latency_hiding_scheduler=true",
    "--xla_gpu_enable_triton_gemm=false",
    "--xla_gpu_enable_while_loop_double_buffering=true",
    "--xla_gpu_enable_pipelined_all_gather=true",
    "--xla_gpu_enable_pipelined_reduce_scatter=true",
    "--xla_gpu_enable_pipelined_all_reduce=true",
)


@dataclasses.dataclass(frozen=True)
class PlatformDefaults:
    """Encoder settings a platform changes (None: keep the config's) and its XLA flags.

    Attributes:
      dtype: `EncoderConfig.dtype`.
      attention_implementation: `EncoderConfig.attention_implementation`, used only when the
        resolved dtype is bfloat16 (cuDNN's kernel takes no float32).
      remat_policy: `EncoderConfig.remat_policy`.
      xla_flags: flags for `XLA_FLAGS`.
    """

    dtype: str | None = None
    attention_implementation: str | None = None
    remat_policy: str | None = None
    xla_flags: tuple[str, ...] = ()


NONE = PlatformDefaults()
GPU = PlatformDefaults(
    dtype="bfloat16",
    attention_implementation="cudnn",
    remat_policy="dots_saveable",
    xla_flags=GPU_XLA_FLAGS,
)


def for_platform(platform: str) -> PlatformDefaults:
    """The defaults of a JAX backend name ('cpu', 'gpu', 'cuda', 'tpu', ...)."""
    return GPU if platform in ("gpu", "cuda") else NONE


def encoder_overrides(
    defaults: PlatformDefaults, config: Any, explicit: Collection[str] = ()
) -> dict[str, str]:
    """{EncoderConfig field: value} that `defaults` changes in `config`, `explicit` left out."""
    wanted = {name: getattr(defaults, name) for name in ENCODER_FIELDS}
    changes = {k: v for k, v in wanted.items() if v is not None and k not in explicit}
    dtype = changes.get("dtype", config.dtype)
    if dtype != "bfloat16" and "attention_implementation" in changes:
        del changes["attention_implementation"]
    return {k: v for k, v in changes.items() if getattr(config, k) != v}


def apply_to_model(model: Any, defaults: PlatformDefaults, explicit: Collection[str] = ()) -> Any:
    """`model` (a frozen dataclass with an `encoder`: any audio `TrainModel`) with its encoder
    given `defaults`; models without an encoder are returned as they are."""
    encoder = getattr(model, "encoder", None)
    if encoder is None:
        return model
    changes = encoder_overrides(defaults, encoder, explicit)
    if not changes:
        return model
    return dataclasses.replace(model, encoder=dataclasses.replace(encoder, **changes))


def gpu_requested(environ: MutableMapping[str, str] = os.environ) -> bool:
    """Whether JAX will start a GPU backend, judged without starting one: `JAX_PLATFORMS`
    names 'cuda' or 'gpu', or it is unset and a CUDA plugin is installed."""
    platforms = environ.get("JAX_PLATFORMS", "")
    if platforms:
        return any(name.strip() in ("cuda", "gpu") for name in platforms.lower().split(","))
    return any(importlib.util.find_spec(name) is not None for name in CUDA_PLUGINS)


def set_xla_flags(environ: MutableMapping[str, str] = os.environ) -> tuple[str, ...]:
    """Adds `GPU.xla_flags` to `environ['XLA_FLAGS']` when a GPU is requested, each flag only
    if `XLA_FLAGS` does not name it already; returns the flags added."""
    if not gpu_requested(environ):
        return ()
    present = environ.get("XLA_FLAGS", "")
    added = tuple(flag for flag in GPU.xla_flags if flag.split("=")[0] not in present)
    if added:
        environ["XLA_FLAGS"] = " ".join([present, *added]).strip()
    return added
