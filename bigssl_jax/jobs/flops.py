"""Analytic FLOPs of the Conformer encoder and of a BEST-RQ pre-training step.

Model FLOPs in the MaxText / PaLM sense: only matrix multiplications and convolutions, a
multiply-add counted as 2 FLOPs, and the backward pass as twice the forward (one product for
the input gradient, one for the weight gradient). Rematerialisation is not counted: it is
extra hardware work, not model work, so "model FLOP utilisation" = these FLOPs / step time /
peak stays comparable across remat policies.

Per utterance, with T' encoder frames, width D, feed-forward width F_ff = ff_mult D, kernel K
(forward FLOPs):

  subsampling   conv1  2 T1 F1 9 C          (T1 = ceil(T / 2), F1 = ceil(F / 2), C channels)
                conv2  2 T' F2 9 C^2        (F2 = ceil(F1 / 2))
                proj   2 T' F2 C D
  each block    ffn                 2 x 2 x 2 T' D F_ff       (macaron: two FFNs, two matmuls)
                attention_proj      4 x 2 T' D^2              (q, k, v, output)
                attention_scores    2 x 2 T'^2 D              (q k^T and softmax(.) v)
                conv_pointwise      3 x 2 T' D^2              (GLU value, gate; output)
                conv_depthwise      2 T' D K
  stacking      2 ceil(T' / 2) 2D D    (XXL+; blocks after it run on half the frames)
  head          2 T' D V_out           (V_out = G x codebook size for BEST-RQ)

Not counted: elementwise work (activations, LayerNorm, softmax, masks, residuals), the log-mel
front end (an FFT and a [257 x 80] product per 10 ms frame) and relative-position biases; on
XLA's count (`compiled.cost_analysis()['flops']`) they add a few percent for large widths and
more for tiny ones (see tests/test_flops.py). XLA:CPU also counts the depthwise kernel's
gradient as far more than 2 T' D K: with K = 32 (Conformer L) its forward + backward count is
~25% above this one, while with K = 5 it is ~4% above and the forward alone matches to 0.1%.

A train step counts 3x the forward of everything with trainable weights, except the first
subsampling convolution at 2x (its input, the features, needs no gradient), plus the frozen
BEST-RQ quantiser once (forward only).
"""

import math

from bigssl_jax.models import best_rq
from bigssl_jax.models import encoder as encoder_lib

BLOCK_TERMS = (
    "ffn",
    "attention_proj",
    "attention_scores",
    "conv_pointwise",
    "conv_depthwise",
)


def _half(size: int) -> int:
    return math.ceil(size / 2)


def block_flops(config: encoder_lib.EncoderConfig, frames: int) -> dict[str, float]:
    """Forward FLOPs of one Conformer block over `frames` frames of one utterance, by term."""
    d, t = config.model_dim, frames
    return {
        "ffn": 2 * 2 * 2 * t * d * config.ff_mult * d,
        "attention_proj": 4 * 2 * t * d * d,
        "attention_scores": 2 * 2 * t * t * d,
        "conv_pointwise": 3 * 2 * t * d * d,
        "conv_depthwise": 2 * t * d * config.conv_kernel_size,
    }


def subsampling_flops(config: encoder_lib.EncoderConfig, num_frames: int) -> dict[str, float]:
    """Forward FLOPs of the two stride-2 convolutions and the projection, one utterance."""
    c, d = config.subsampling_channels, config.model_dim
    t1, f1 = _half(num_frames), _half(config.input_dim)
    t2, f2 = _half(t1), _half(f1)
    return {
        "conv1": 2 * t1 * f1 * 9 * c,
        "conv2": 2 * t2 * f2 * 9 * c * c,
        "projection": 2 * t2 * f2 * c * d,
    }


def encoder_forward_flops(
    config: encoder_lib.EncoderConfig, num_frames: int, *, head_outputs: int = 0
) -> dict[str, float]:
    """Forward FLOPs of `ConformerEncoder` (plus an optional linear head) for one utterance.

    Args:
      config: the encoder.
      num_frames: T, input (10 ms) feature frames.
      head_outputs: output width of a linear head on the encoder output (0: none).

    Returns:
      {'conv1', 'conv2', 'projection', <each of BLOCK_TERMS summed over blocks>, 'stacking',
       'head', 'total'}.
    """
    counts = subsampling_flops(config, num_frames)
    frames = _half(_half(num_frames))
    counts.update(dict.fromkeys(BLOCK_TERMS, 0.0))
    counts["stacking"] = 0.0
    for layer in range(config.num_layers):
        if layer == config.stacking_layer:
            frames = _half(frames)
            counts["stacking"] = 2 * frames * 2 * config.model_dim * config.model_dim
        for term, value in block_flops(config, frames).items():
            counts[term] += value
    counts["head"] = 2 * frames * config.model_dim * head_outputs
    counts = {name: float(value) for name, value in counts.items()}
    counts["total"] = sum(counts.values())
    return counts


def best_rq_quantizer_flops(
    stacked_dim: int, frames: int, code_dim: int, codebook_size: int, num_codebooks: int
) -> float:
    """Forward FLOPs of the random-projection quantiser for one utterance (projection + lookup)."""
    projected = num_codebooks * code_dim
    return float(2 * frames * stacked_dim * projected + 2 * frames * projected * codebook_size)


def train_step_flops(
    config: encoder_lib.EncoderConfig,
    num_frames: int,
    batch_size: int,
    *,
    head_outputs: int = 0,
    frozen_flops_per_example: float = 0.0,
) -> dict[str, float]:
    """Model FLOPs of one train step (forward + backward) for a batch of equal-length utterances.

    Args:
      config: the encoder.
      num_frames: T, input feature frames per utterance.
      batch_size: B.
      head_outputs: width of the trained linear head (G x V for BEST-RQ).
      frozen_flops_per_example: forward-only FLOPs without gradients (the BEST-RQ quantiser).

    Returns:
      {'forward': B x forward FLOPs, 'train_step': the step's model FLOPs,
       'per_example_forward': forward FLOPs of one utterance}.
    """
    forward = encoder_forward_flops(config, num_frames, head_outputs=head_outputs)
    per_example = 3 * forward["total"] - forward["conv1"] + frozen_flops_per_example
    return {
        "forward": batch_size * (forward["total"] + frozen_flops_per_example),
        "train_step": batch_size * per_example,
        "per_example_forward": forward["total"],
    }


def best_rq_train_step_flops(
    config: encoder_lib.EncoderConfig,
    objective: best_rq.BestRqConfig,
    num_frames: int,
    batch_size: int,
) -> dict[str, float]:
    """Model FLOPs of one BEST-RQ pre-training step (`models.best_rq`); see above.

    Args:
      config: the encoder.
      objective: BEST-RQ settings (head width G x V, quantiser size).
      num_frames: T, log-mel frames per utterance.
      batch_size: B.

    Returns:
      As `train_step_flops`.
    """
    stride = best_rq.encoder_stride(config)
    quantizer = best_rq_quantizer_flops(
        stride * config.input_dim,
        math.ceil(num_frames / stride),
        objective.code_dim,
        objective.codebook_size,
        objective.num_codebooks,
    )
    return train_step_flops(
        config,
        num_frames,
        batch_size,
        head_outputs=objective.num_codebooks * objective.codebook_size,
        frozen_flops_per_example=quantizer,
    )
