"""Loading a trained model for inference: evaluate, transcribe, pseudo-label, embed.

    model = gin_utils.run_model("/runs/ctc")          # at the seam: from the run's gin
    loaded = inference.load_model("/runs/ctc", model) # a run dir, its checkpoints/ or a step
    tokens, paddings, scores = jax.jit(loaded.model.decode)(loaded.variables, audio, pad)

A run directory (`bigssl train --model_dir=RUN`) holds `config.gin` (every binding of the
run, written before training), `checkpoints/<step>/` and, for models that read text,
`vocabulary.model` (the corpus vocabulary copied at the start of training). The model
wrapper is built at the seam from that gin (`gin_utils.run_model`: this module reads no
gin); `load_model` points its `vocabulary` at the run's copy and restores the params of the
chosen step (the latest unless a step directory is given): the EMA of its params when the
run kept one (`OptimizerConfig.ema_decay`), unless `ema=False`. Variables are placed on one
device.

`with_fusion_lm` shallow-fuses the Transformer LM of a loaded `bigssl train-lm` run, or the
token n-gram LM of a `bigssl train-ngram` run (`load_ngram_run`), into an ASR model's beam
search (evaluate, transcribe and pseudo-label share it):

    model = inference.with_fusion_lm(loaded.model, loaded_lm, lm_weight=0.3)
"""

import dataclasses
import os
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from etils import epath

from bigssl_jax import checkpointing
from bigssl_jax.models import asr

CONFIG_FILE = "config.gin"  # a run's gin bindings (`gin_utils.write_config`)
VOCABULARY_FILE = "vocabulary.model"
NGRAM_FILE = "ngram_lm.npz"  # what `bigssl train-ngram` writes into its run dir
# The shapes `init_variables` sees; parameter shapes do not depend on them.
_EXAMPLE_SAMPLES, _EXAMPLE_TOKENS = 16000, 8


@dataclasses.dataclass(frozen=True)
class LoadedModel:
    """A restored model.

    Attributes:
      model: the model wrapper (a `models.base.TrainModel`), vocabulary set if the run has one.
      variables: {'params': ..., other collections} on one device.
      run_dir: the run directory.
      step: the restored step.
      params_source: 'ema' (the EMA of the run's params) or 'params'.
    """

    model: Any
    variables: dict[str, Any]
    run_dir: epath.Path
    step: int
    params_source: str = "params"


def run_dir_of(step_dir: epath.Path) -> epath.Path:
    """`RUN` of `RUN/checkpoints/<step>`."""
    return step_dir.parent.parent


def example_batch(batch_size: int = 1) -> dict[str, jax.ShapeDtypeStruct]:
    """Abstract batch fields every model's `init_variables` accepts."""
    f32, i32 = jnp.float32, jnp.int32
    return {
        "audio": jax.ShapeDtypeStruct((batch_size, _EXAMPLE_SAMPLES), f32),
        "audio_paddings": jax.ShapeDtypeStruct((batch_size, _EXAMPLE_SAMPLES), f32),
        "targets": jax.ShapeDtypeStruct((batch_size, _EXAMPLE_TOKENS), i32),
        "target_paddings": jax.ShapeDtypeStruct((batch_size, _EXAMPLE_TOKENS), f32),
        "weights": jax.ShapeDtypeStruct((batch_size,), f32),
    }


def reads_text(model: Any) -> bool:
    """Whether `model` reads text: a model dataclass with a `vocabulary` field (every
    `models.asr.AsrModel`, and text models such as the LM's)."""
    return dataclasses.is_dataclass(model) and any(
        field.name == "vocabulary" for field in dataclasses.fields(model)
    )


def with_run_vocabulary(model: Any, run_dir: epath.Path) -> Any:
    """`model` with `vocabulary` = the run's copy, when the model reads text and has none."""
    vocabulary = run_dir / VOCABULARY_FILE
    if reads_text(model) and not model.vocabulary and vocabulary.exists():
        return dataclasses.replace(model, vocabulary=str(vocabulary))
    return model


def restore_variables(model: Any, step_dir: epath.Path, *, ema: bool = True) -> dict[str, Any]:
    """The variables of `model` saved at `step_dir`, on one device.

    Args:
      model: the model wrapper.
      step_dir: a checkpoint step directory.
      ema: restore the EMA of the params when the run kept one (else the params).

    Returns:
      {'params': ..., other collections}: 'params' the params the checkpoint serves
      (`checkpointing.restore_params`), every other collection `model.init_variables` makes
      (e.g. a classifier's fitted whitening) from its model state.
    """
    boxed = jax.eval_shape(model.init_variables, jax.random.key(0), example_batch())
    abstract = checkpointing.on_one_device(dict(nn.unbox(boxed)))
    params = abstract.pop("params")
    variables = {"params": checkpointing.restore_params(step_dir, params, ema=ema)}
    if abstract:
        variables.update(checkpointing.restore_part(step_dir, "model_state", abstract))
    return variables


def load_model(checkpoint: os.PathLike | str, model: Any, *, ema: bool = True) -> LoadedModel:
    """Restores the model of a run (see the module docstring).

    Args:
      checkpoint: a run directory, its `checkpoints/` directory or one step directory
        (local or a URI such as `gs://bucket/runs/ctc`).
      model: the run's model wrapper, built at the seam (`gin_utils.run_model`).
      ema: restore the EMA of the params when the run kept one; False: the params.

    Returns:
      The loaded model.

    Raises:
      FileNotFoundError: no finalised checkpoint there.
    """
    step_dir = checkpointing.resolve_init_checkpoint(checkpoint)
    run_dir = run_dir_of(step_dir)
    model = with_run_vocabulary(model, run_dir)
    variables = restore_variables(model, step_dir, ema=ema)
    source = checkpointing.params_source(step_dir, ema=ema)
    return LoadedModel(model, variables, run_dir, int(step_dir.name), source)


@dataclasses.dataclass(frozen=True)
class NgramRun:
    """The counted LM of a `bigssl train-ngram` run and where it came from."""

    lm: Any  # decoding.ngram_lm.NgramLanguageModel
    run_dir: epath.Path


def is_ngram_run(checkpoint: os.PathLike | str) -> bool:
    """Whether `checkpoint` is a `bigssl train-ngram` run directory."""
    return (epath.Path(checkpoint) / NGRAM_FILE).exists()


def resolve_lm_checkpoint(checkpoint: os.PathLike | str | None) -> str | None:
    """What `--lm_checkpoint` names, pinned: an n-gram run dir as it is, a Transformer LM run
    resolved to its step directory (so every consumer fuses the step that reports name).

    Raises:
      FileNotFoundError: neither an n-gram run nor a finalised LM checkpoint there.
    """
    if not checkpoint:
        return None
    if is_ngram_run(checkpoint):
        return str(checkpoint)
    return str(checkpointing.resolve_init_checkpoint(checkpoint))


def load_ngram_run(run_dir: os.PathLike | str) -> NgramRun:
    """The LM of a `bigssl train-ngram` run (no gin: it has no model to build)."""
    from bigssl_jax.decoding import ngram_lm

    run_dir = epath.Path(run_dir)
    return NgramRun(ngram_lm.NgramLanguageModel.load(run_dir / NGRAM_FILE), run_dir)


def _fused_ngram(model: Any, run: NgramRun) -> Any:
    """`run.lm`, checked to share `model`'s vocabulary (size, and the sentencepiece model
    when both runs carry theirs)."""
    if run.lm.vocab_size != model.vocab_size:
        raise ValueError(
            f"the n-gram LM {run.run_dir} has {run.lm.vocab_size} tokens, the ASR model "
            f"{model.vocab_size}: they must share the vocabulary"
        )
    ours, theirs = model.vocabulary, run.run_dir / VOCABULARY_FILE
    if ours and theirs.exists() and epath.Path(ours).read_bytes() != theirs.read_bytes():
        raise ValueError(f"the n-gram LM {run.run_dir} was counted in another vocabulary")
    return run.lm


def with_fusion_lm(model: Any, lm: LoadedModel | NgramRun | None, lm_weight: float | None):
    """`model` (CTC or RNN-T) shallow-fused with the LM of a `bigssl train-lm` run or of a
    `bigssl train-ngram` run.

    The LM's cache holds `model.decoding.max_output_length + 1` positions (the longest
    hypothesis the search can build).

    Args:
      model: an `asr.AsrModel`, beam search configured.
      lm: the loaded LM run (`load_model` of its `LmTrainModel`, or `load_ngram_run`); None
        returns `model`
        with only `lm_weight` applied (unchanged when `lm_weight` is None too).
      lm_weight: the fusion weight; None keeps `model.decoding.lm_weight`.

    Raises:
      ValueError: a model that does not decode, not an LM run, a different vocabulary size,
        or greedy decoding (shallow fusion is a beam-search feature).
    """
    if lm is None and lm_weight is None:
        return model
    if not isinstance(model, asr.AsrModel):
        raise ValueError(f"{type(model).__name__} does not decode: no LM to fuse into")
    decoding = model.decoding
    if lm_weight is not None:
        decoding = dataclasses.replace(decoding, lm_weight=lm_weight)
    if lm is None:
        return dataclasses.replace(model, decoding=decoding)
    if decoding.beam_size == 1:
        raise ValueError("fusing an LM needs beam search: pass --beam_size > 1")
    if isinstance(lm, NgramRun):
        return dataclasses.replace(model, decoding=decoding, lm=_fused_ngram(model, lm))
    if not isinstance(lm.model, asr.FusionLmModel):
        raise ValueError(f"{lm.run_dir} is not a `bigssl train-lm` run (no fusion_lm)")
    config = lm.model.config
    if config.vocab_size != model.vocab_size:
        raise ValueError(
            f"the LM {lm.run_dir} has {config.vocab_size} tokens, the ASR model "
            f"{model.vocab_size}: they must share the vocabulary"
        )
    max_length = min(decoding.max_output_length + 1, config.max_length)
    fused = lm.model.fusion_lm(lm.variables, max_length=max_length)
    return dataclasses.replace(model, decoding=decoding, lm=fused)
