"""Self-supervised losses: wav2vec 2.0 contrastive + diversity, masked prediction, code metrics.

Every loss is computed in float32 from arrays (the encoder and quantiser run elsewhere) and
returns `(scalar, metrics)`, averaged over the frames that count in the *whole* batch (under
`jax.jit` with a sharded batch the sums are global). Objectives as combinations:

* wav2vec 2.0:  L = L_contrastive + 0.1 L_diversity
* w2v-BERT:     L = L_contrastive + alpha L_diversity + beta L_mlm (MLM on quantiser ids)
* BEST-RQ:      L = L_mlm (MLM on random-projection ids)

`SSLLossWeights` + `combine_losses` express all three.
"""

import dataclasses
from collections.abc import Mapping

import jax
import jax.numpy as jnp

_HIGHEST = jax.lax.Precision.HIGHEST
# A distractor whose cosine with the positive target reaches this is the positive (fairseq
# masks distractors equal to the positive; parallel targets give the same logit for any context).
_SAME_TARGET_COSINE = 1.0 - 1e-5


def _l2_normalize(x: jax.Array, eps: float = 1e-8) -> jax.Array:
    x = x.astype(jnp.float32)
    return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(jnp.square(x), -1, keepdims=True), eps**2))


def sample_negatives(
    rng: jax.Array, mask: jax.Array, num_negatives: int
) -> tuple[jax.Array, jax.Array]:
    """Draws distractor positions among the other masked frames of the same utterance.

    For each frame t of utterance b: K positions uniformly *with replacement* from the M_b - 1
    masked frames of b other than t (fairseq's index-shift trick: draw j in [0, M_b - 2], skip
    t's own rank). With fewer than K other masked frames some distractors repeat (as in
    fairseq); with none (M_b = 1) all K are marked invalid. Rows of unmasked frames are
    meaningless.

    Args:
      rng: PRNG key.
      mask: [B, T] bool, True at masked frames.
      num_negatives: K.

    Returns:
      (indices [B, T, K] int32 time positions, valid [B, T, K] bool).
    """
    batch, length = mask.shape
    num_others = jnp.sum(mask, axis=1, dtype=jnp.int32) - 1  # [B]
    # order[b, r]: time position of the r-th masked frame of b (masked frames sort first).
    order = jnp.argsort(jnp.logical_not(mask).astype(jnp.int32), axis=1, stable=True)
    own_rank = jnp.cumsum(mask, axis=1, dtype=jnp.int32) - 1  # [B, T], valid at masked frames
    draws = jax.random.uniform(rng, (batch, length, num_negatives))
    others = jnp.maximum(num_others, 0)[:, None, None]
    rank = jnp.minimum(jnp.floor(draws * others).astype(jnp.int32), jnp.maximum(others - 1, 0))
    rank = rank + (rank >= own_rank[..., None]).astype(jnp.int32)
    rank = jnp.minimum(rank, length - 1)
    indices = jnp.take_along_axis(order, rank.reshape(batch, -1), axis=1)
    indices = indices.reshape(batch, length, num_negatives)
    valid = jnp.broadcast_to((num_others > 0)[:, None, None], indices.shape)
    return indices, valid


def contrastive_loss(
    context: jax.Array,
    targets: jax.Array,
    mask: jax.Array,
    rng: jax.Array,
    *,
    num_negatives: int = 100,
    temperature: float = 0.1,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """wav2vec 2.0 contrastive loss over masked frames.

    s(a, b) = cos(a, b) / kappa;  for masked t with distractors n_1..n_K (`sample_negatives`):
    l_t = -log( exp s(c_t, q_t) / (exp s(c_t, q_t) + sum_k exp s(c_t, q_{n_k})) ),
    dropping distractors whose target is the positive's (cosine >= 1 - 1e-5, fairseq's
    duplicate masking) and invalid ones. L = mean over masked frames of the batch.

    Cosines come from the per-utterance [T, T] similarity matrix (gathered, not [T, K, D]
    distractor copies): O(B T^2 D) flops, B T^2 floats.

    Args:
      context: [B, T, D] context vectors c (encoder output, projected to D).
      targets: [B, T, D] targets q (quantised or linear-projected unmasked features).
      mask: [B, T] bool, True at masked frames.
      rng: PRNG key for distractor sampling.
      num_negatives: K distractors per masked frame.
      temperature: kappa, the logit temperature.

    Returns:
      (loss, {"contrastive_loss", "contrastive_accuracy", "num_masked_frames"}); accuracy is
      the fraction of masked frames whose positive logit beats every kept distractor.
    """
    c, q = _l2_normalize(context), _l2_normalize(targets)
    indices, valid = sample_negatives(rng, mask, num_negatives)
    positive = jnp.sum(c * q, axis=-1) / temperature  # [B, T]
    similarity = jnp.einsum("btd,bsd->bts", c, q, precision=_HIGHEST) / temperature
    negative = jnp.take_along_axis(similarity, indices, axis=2)  # [B, T, K]
    target_cosine = jnp.einsum("btd,bsd->bts", q, q, precision=_HIGHEST)
    same_target = jnp.take_along_axis(target_cosine, indices, axis=2) >= _SAME_TARGET_COSINE
    negative = jnp.where(valid & ~same_target, negative, -jnp.inf)

    logits = jnp.concatenate([positive[..., None], negative], axis=-1)
    per_frame = jax.nn.logsumexp(logits, axis=-1) - positive
    weights = mask.astype(jnp.float32)
    count = jnp.sum(weights)
    denominator = jnp.maximum(count, 1.0)
    loss = jnp.sum(per_frame * weights) / denominator
    correct = (positive > jnp.max(negative, axis=-1)).astype(jnp.float32)
    metrics = {
        "contrastive_loss": loss,
        "contrastive_accuracy": jnp.sum(correct * weights) / denominator,
        "num_masked_frames": count,
    }
    return loss, metrics


def _entropy(probs: jax.Array) -> jax.Array:
    """Entropy (nats) over the last axis; 0 log 0 = 0."""
    return -jnp.sum(jnp.where(probs > 0, probs * jnp.log(jnp.maximum(probs, 1e-30)), 0.0), -1)


def diversity_loss(probs: jax.Array, mask: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
    """wav2vec 2.0 codebook diversity loss.

    p_bar_g = mean over counted frames of the softmax p_{g,.};  L = (G V - sum_g exp H(p_bar_g))
    / (G V). Zero when every group uses its V codes uniformly on average.

    Args:
      probs: [B, T, G, V] noise-free code probabilities (`QuantizerOutput.probs`).
      mask: [B, T] bool, frames that count: the masked frames (fairseq quantises only those)
        or all valid frames (`paddings < 0.5`).

    Returns:
      (loss, {"diversity_loss", "prob_perplexity"}); prob_perplexity = sum_g exp H(p_bar_g),
      between G and G V.
    """
    groups, codes = probs.shape[-2:]
    weights = mask.astype(jnp.float32)[..., None, None]
    mean_probs = jnp.sum(probs.astype(jnp.float32) * weights, axis=(0, 1))
    mean_probs = mean_probs / jnp.maximum(jnp.sum(weights), 1.0)  # [G, V]
    perplexity = jnp.sum(jnp.exp(_entropy(mean_probs)))
    loss = (groups * codes - perplexity) / (groups * codes)
    return loss, {"diversity_loss": loss, "prob_perplexity": perplexity}


def masked_prediction_loss(
    logits: jax.Array, target_ids: jax.Array, mask: jax.Array
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Cross-entropy on masked frames (w2v-BERT MLM, BEST-RQ).

    L = mean over masked (b, t) and groups g of -log softmax(logits_{b,t,g})[id_{b,t,g}].

    Args:
      logits: [B, T, V] or [B, T, G, V] predictions.
      target_ids: [B, T] or [B, T, G] int target codes.
      mask: [B, T] bool, True at masked frames.

    Returns:
      (loss, {"mlm_loss", "mlm_accuracy"}).
    """
    logits = logits.astype(jnp.float32)
    target_ids = target_ids.astype(jnp.int32)
    label_logit = jnp.take_along_axis(logits, target_ids[..., None], axis=-1)[..., 0]
    per_target = jax.nn.logsumexp(logits, axis=-1) - label_logit
    weights = jnp.broadcast_to(
        mask.reshape(mask.shape + (1,) * (target_ids.ndim - 2)), target_ids.shape
    ).astype(jnp.float32)
    denominator = jnp.maximum(jnp.sum(weights), 1.0)
    loss = jnp.sum(per_target * weights) / denominator
    correct = (jnp.argmax(logits, axis=-1) == target_ids).astype(jnp.float32)
    accuracy = jnp.sum(correct * weights) / denominator
    return loss, {"mlm_loss": loss, "mlm_accuracy": accuracy}


def codebook_metrics(ids: jax.Array, mask: jax.Array, num_codes: int) -> dict[str, jax.Array]:
    """Code-usage statistics of a batch (watch these for codebook collapse).

    Args:
      ids: [B, T] or [B, T, G] int code ids.
      mask: [B, T] bool, frames that count (e.g. `paddings < 0.5`).
      num_codes: V, codebook size.

    Returns:
      {"code_perplexity": mean over groups of exp H(code histogram), in [1, V],
       "code_usage": mean over groups of the fraction of the V codes used at least once}.
    """
    ids = ids.reshape(ids.shape[0], ids.shape[1], -1).astype(jnp.int32)
    groups = ids.shape[-1]
    weights = jnp.broadcast_to(mask[..., None], ids.shape).astype(jnp.float32)
    group_index = jnp.broadcast_to(jnp.arange(groups), ids.shape)
    counts = jnp.zeros((groups, num_codes), jnp.float32)
    counts = counts.at[group_index.ravel(), ids.ravel()].add(weights.ravel())  # [G, V]
    histogram = counts / jnp.maximum(jnp.sum(counts, axis=-1, keepdims=True), 1.0)
    return {
        "code_perplexity": jnp.mean(jnp.exp(_entropy(histogram))),
        "code_usage": jnp.mean(jnp.mean((counts > 0).astype(jnp.float32), axis=-1)),
    }


@dataclasses.dataclass(frozen=True, kw_only=True)
class SSLLossWeights:
    """Weights of the self-supervised terms: L = sum_name weight_name * L_name.

    Attributes:
      contrastive: weight of `contrastive_loss` (w2v-BERT's L_w2v).
      diversity: weight of `diversity_loss` (alpha; 0.1 in wav2vec 2.0).
      mlm: weight of `masked_prediction_loss` (beta in w2v-BERT; BEST-RQ's only term).
    """

    contrastive: float = 1.0
    diversity: float = 0.1
    mlm: float = 1.0


def combine_losses(
    losses: Mapping[str, jax.Array], weights: SSLLossWeights
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Weighted sum of the terms present, e.g. {"contrastive": .., "diversity": ..}.

    Args:
      losses: term name (a field of `SSLLossWeights`) -> scalar loss; absent terms count 0.
      weights: the term weights.

    Returns:
      (total, {"loss": total}).
    """
    names = {field.name for field in dataclasses.fields(SSLLossWeights)}
    unknown = set(losses) - names
    if unknown:
        raise ValueError(f"unknown loss terms {sorted(unknown)}; expected some of {sorted(names)}")
    total = sum(
        getattr(weights, name) * value.astype(jnp.float32) for name, value in losses.items()
    )
    total = jnp.asarray(total, jnp.float32)
    return total, {"loss": total}
