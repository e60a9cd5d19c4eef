"""w2v-BERT 2.0 as published by `transformers` (`Wav2Vec2BertModel`): its config and weights
as our encoder's (`bigssl import-encoder --format=hf`, `jobs.import_encoder`).

A `Wav2Vec2BertModel` is our Conformer with the w2v-BERT 2.0 variants of `EncoderConfig`
(input_layer 'stack', relative_position_kind 'shaw_key', causal_conv, layer_norm_epsilon)
behind the Kaldi front end (`LogMelConfig.style = 'kaldi'`). Its weights map one to one:

  feature_projection.layer_norm / .projection        subsampling/norm, subsampling/projection
  encoder.layers.{i}.ffn1_layer_norm, ffn1.*          block i: ffn_in/norm, hidden, output
  encoder.layers.{i}.self_attn_layer_norm             attention_norm
  encoder.layers.{i}.self_attn.linear_{q,k,v,out}     attention/{query,key,value,output}
  encoder.layers.{i}.self_attn.distance_embedding     attention/distance_embedding
  encoder.layers.{i}.conv_module.*                    conv/norm, glu_value + glu_gate (the two
                                                      halves of pointwise_conv1),
                                                      depthwise_kernel, depthwise_norm,
                                                      pointwise_out
  encoder.layers.{i}.ffn2_layer_norm, ffn2.*          ffn_out/...
  encoder.layers.{i}.final_layer_norm                 final_norm
torch's Linear weights [out, in] are transposed; attention kernels are split into heads. The
convolution module has no biases in w2v-BERT 2.0: ours (GLU, depthwise, output) are set to 0.
`masked_spec_embed` (the pre-training mask vector) is dropped. An adapter
(`add_adapter`) or intermediate FFN is not supported. Plain numpy: no torch needed.
"""

import dataclasses
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from bigssl_jax.layers import frontend
from bigssl_jax.models import encoder as encoder_lib

MODEL_TYPE = "wav2vec2-bert"
# Prefixes of the base model's tensors in the checkpoints of its heads (e.g. ...ForCTC).
_PREFIXES = ("wav2vec2_bert.",)
_IGNORED = ("masked_spec_embed",)
_ACTIVATIONS = ("swish", "silu")


class HfImportError(ValueError):
    """A model directory that cannot be imported; the message is one line."""


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise HfImportError(message)


def encoder_config(hf: Mapping[str, Any]) -> encoder_lib.EncoderConfig:
    """Our `EncoderConfig` for a `Wav2Vec2BertConfig` (its config.json as a dict).

    Raises:
      HfImportError: another architecture, or options we have no variant of.
    """
    model_type = hf.get("model_type")
    _require(
        model_type == MODEL_TYPE,
        f"unsupported architecture: model_type {model_type!r} "
        f"({', '.join(hf.get('architectures') or ['?'])}); supported: {MODEL_TYPE!r}",
    )
    position = hf.get("position_embeddings_type", "relative_key")
    _require(
        position in ("relative_key", None),
        f"unsupported position_embeddings_type {position!r} (supported: 'relative_key', None)",
    )
    for option in ("add_adapter", "use_intermediate_ffn_before_adapter"):
        _require(not hf.get(option, False), f"unsupported option {option} = true")
    act = hf.get("hidden_act", "swish")
    _require(act in _ACTIVATIONS, f"unsupported hidden_act {act!r} (supported: swish)")
    hidden, heads = hf["hidden_size"], hf["num_attention_heads"]
    _require(
        hf["intermediate_size"] % hidden == 0,
        f"intermediate_size {hf['intermediate_size']} is not a multiple of {hidden}",
    )
    _require(
        hf.get("feature_projection_input_dim", 160) % 2 == 0,
        f"feature_projection_input_dim {hf.get('feature_projection_input_dim')} is odd",
    )
    return encoder_lib.EncoderConfig(
        input_dim=hf.get("feature_projection_input_dim", 160) // 2,
        model_dim=hidden,
        num_layers=hf["num_hidden_layers"],
        num_heads=heads,
        ff_mult=hf["intermediate_size"] // hidden,
        conv_kernel_size=hf["conv_depthwise_kernel_size"],
        use_relative_position=position == "relative_key",
        relative_position_kind="shaw_key",
        max_left_distance=hf.get("left_max_position_embeddings", 64),
        max_right_distance=hf.get("right_max_position_embeddings", 8),
        causal_conv=True,
        layer_norm_epsilon=hf.get("layer_norm_eps", 1e-5),
        input_layer="stack",
        dropout_rate=hf.get("hidden_dropout", 0.0),
        ff_dropout_rate=hf.get("activation_dropout", 0.0),
        input_dropout_rate=hf.get("feat_proj_dropout", 0.0),
    )


def log_mel_config(preprocessor: Mapping[str, Any] | None) -> frontend.LogMelConfig:
    """The Kaldi front end of `SeamlessM4TFeatureExtractor` (preprocessor_config.json, or its
    defaults when the directory has none): 80 bins, 25 ms / 10 ms, 20 Hz - Nyquist.

    Raises:
      HfImportError: a feature extractor we do not reproduce (stride other than 2).
    """
    preprocessor = preprocessor or {}
    stride = preprocessor.get("stride", 2)
    _require(stride == 2, f"unsupported feature extractor stride {stride} (supported: 2)")
    sample_rate = preprocessor.get("sampling_rate", 16000)
    return frontend.LogMelConfig(
        style="kaldi",
        sample_rate=sample_rate,
        num_mel_bins=preprocessor.get("num_mel_bins", 80),
        lower_edge_hz=20.0,
        upper_edge_hz=sample_rate / 2,
        log_floor=float(np.finfo(np.float32).eps),
        normalize=True,
    )


@dataclasses.dataclass(frozen=True)
class _Leaf:
    """A converted param and the HF tensor it comes from ('' for our zero biases)."""

    array: np.ndarray
    source: str


class _Tensors:
    """The checkpoint's tensors, taken by name as `_Leaf`s."""

    def __init__(self, tensors: Mapping[str, np.ndarray]):
        self.tensors = tensors

    def __call__(self, name: str, transform=lambda x: x) -> _Leaf:
        if name not in self.tensors:
            raise HfImportError(f"the checkpoint has no tensor {name}")
        tensor = self.tensors[name]
        try:
            return _Leaf(np.asarray(transform(tensor), np.float32), name)
        except (ValueError, IndexError):
            raise HfImportError(f"shape mismatch: {name} has shape {tensor.shape}") from None

    def linear(self, name: str) -> dict[str, _Leaf]:
        """torch Linear `name` as a Dense: {'kernel': W^T [in, out], 'bias': b}."""
        return {"kernel": self(f"{name}.weight", np.transpose), "bias": self(f"{name}.bias")}

    def norm(self, name: str) -> dict[str, _Leaf]:
        return {"scale": self(f"{name}.weight"), "bias": self(f"{name}.bias")}


def _zeros(size: int) -> _Leaf:
    return _Leaf(np.zeros((size,), np.float32), "")


def _attention(take: _Tensors, prefix: str, heads: int) -> dict[str, Any]:
    """linear_{q,k,v}: W^T [D, D] -> [D, H, Dh], b -> [H, Dh]; linear_out -> [H, Dh, D]."""
    out = {}
    for ours, theirs in (("query", "q"), ("key", "k"), ("value", "v")):
        name = f"{prefix}.linear_{theirs}"
        out[ours] = {
            "kernel": take(f"{name}.weight", lambda w: w.T.reshape(w.shape[1], heads, -1)),
            "bias": take(f"{name}.bias", lambda b: b.reshape(heads, -1)),
        }
    out["output"] = {
        "kernel": take(f"{prefix}.linear_out.weight", lambda w: w.T.reshape(heads, -1, len(w))),
        "bias": take(f"{prefix}.linear_out.bias"),
    }
    if f"{prefix}.distance_embedding.weight" in take.tensors:
        out["distance_embedding"] = take(f"{prefix}.distance_embedding.weight")
    return out


def _conv(take: _Tensors, prefix: str) -> dict[str, Any]:
    """pointwise_conv1 [2D, D, 1] -> glu_value, glu_gate; depthwise [D, 1, K] -> [K, D]."""
    pointwise = f"{prefix}.pointwise_conv1.weight"
    dim = take.tensors[pointwise].shape[0] // 2 if pointwise in take.tensors else 0
    return {
        "norm": take.norm(f"{prefix}.layer_norm"),
        "glu_value": {"kernel": take(pointwise, lambda w: w[:dim, :, 0].T), "bias": _zeros(dim)},
        "glu_gate": {"kernel": take(pointwise, lambda w: w[dim:, :, 0].T), "bias": _zeros(dim)},
        "depthwise_kernel": take(f"{prefix}.depthwise_conv.weight", lambda w: w[:, 0, :].T),
        "depthwise_bias": _zeros(dim),
        "depthwise_norm": take.norm(f"{prefix}.depthwise_layer_norm"),
        "pointwise_out": {
            "kernel": take(f"{prefix}.pointwise_conv2.weight", lambda w: w[..., 0].T),
            "bias": _zeros(dim),
        },
    }


def _block(take: _Tensors, prefix: str, heads: int) -> dict[str, Any]:
    def ffn(name: str) -> dict[str, Any]:
        return {
            "norm": take.norm(f"{prefix}.{name}_layer_norm"),
            "hidden": take.linear(f"{prefix}.{name}.intermediate_dense"),
            "output": take.linear(f"{prefix}.{name}.output_dense"),
        }

    return {
        "ffn_in": ffn("ffn1"),
        "attention_norm": take.norm(f"{prefix}.self_attn_layer_norm"),
        "attention": _attention(take, f"{prefix}.self_attn", heads),
        "conv": _conv(take, f"{prefix}.conv_module"),
        "ffn_out": ffn("ffn2"),
        "final_norm": take.norm(f"{prefix}.final_layer_norm"),
    }


def strip_prefix(tensors: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The base model's tensors, without a head model's prefix ('wav2vec2_bert.')."""
    for prefix in _PREFIXES:
        if any(name.startswith(prefix) for name in tensors):
            return {n[len(prefix) :]: t for n, t in tensors.items() if n.startswith(prefix)}
    return dict(tensors)


def convert_params(
    tensors: Mapping[str, np.ndarray], config: encoder_lib.EncoderConfig
) -> dict[str, Any]:
    """Our `ConformerEncoder` params (float32 numpy, grouped as `config.stages`) from the
    tensors of a `Wav2Vec2BertModel` (its safetensors, any head's prefix stripped).

    Raises:
      HfImportError: a tensor is missing, has another shape than `config` wants (the message
        names it), or is left over (another architecture's).
    """
    tensors = strip_prefix(tensors)
    take = _Tensors(tensors)
    leaves = {
        "subsampling": {
            "norm": take.norm("feature_projection.layer_norm"),
            "projection": take.linear("feature_projection.projection"),
        },
        "stages_0": {
            f"layers_{i}": _block(take, f"encoder.layers.{i}", config.num_heads)
            for i in range(config.num_layers)
        },
    }
    used = tuple(f"encoder.layers.{i}." for i in range(config.num_layers))
    unused = sorted(
        name
        for name in tensors
        if not name.startswith(("feature_projection.", *used)) and name not in _IGNORED
    )
    if unused:
        raise HfImportError(f"unexpected tensors, e.g. {unused[0]} ({len(unused)} in all)")
    _check_shapes(leaves, config)
    params = jax.tree.map(lambda leaf: leaf.array, leaves)
    return encoder_lib.restage_params(params, config)


def _check_shapes(leaves: Mapping[str, Any], config: encoder_lib.EncoderConfig) -> None:
    """Raises an `HfImportError` naming the first tensor whose shape `config` does not want."""
    single = dataclasses.replace(config, scan_layers=False, split_layers=(), stacking_layer=None)
    model = encoder_lib.ConformerEncoder(single)

    def init():
        features = jnp.zeros((1, 8, config.input_dim), jnp.float32)
        return model.init(jax.random.key(0), features, jnp.zeros((1, 8)), train=False)

    wanted = nn.unbox(jax.eval_shape(init))["params"]
    have = dict(jax.tree_util.tree_leaves_with_path(leaves))
    for path, spec in jax.tree_util.tree_leaves_with_path(wanted):
        leaf = have.get(path)
        ours = "/".join(key.key for key in path)
        _require(leaf is not None, f"no tensor converts to our params/{ours}")
        _require(
            leaf.array.shape == spec.shape,
            f"shape mismatch: {leaf.source or 'params/' + ours} gives {leaf.array.shape}, "
            f"the encoder of config.json wants {spec.shape} (params/{ours})",
        )
