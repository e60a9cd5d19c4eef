"""Import a published pre-trained encoder as a run of ours (`bigssl import-encoder`).

    <source>/config.json, model.safetensors (or model.safetensors.index.json + shards),
             preprocessor_config.json (optional)
      -> <model_dir>/checkpoints/0/   Orbax checkpoint: {'step': 0, 'params': {'encoder': ...}}
         <model_dir>/encoder.gin      EncoderConfig + LogMelConfig bindings of that encoder
         <model_dir>/import.json      what was imported (source, format, parameter count)

A fine-tuning run starts from it like from a pre-training run of ours: include
`encoder.gin` and set `TrainerConfig.init_checkpoint = '<model_dir>'` (the fine-tuning run
gins take its 'encoder' params scope). Only the HF format of w2v-BERT 2.0
(`Wav2Vec2BertModel`, `models.hf_w2v_bert`) is supported. Tensors are read with
safetensors' numpy API: torch is not needed.
"""

import dataclasses
import json
import os
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
from etils import epath

from bigssl_jax import checkpointing, paths
from bigssl_jax.layers import frontend
from bigssl_jax.models import encoder as encoder_lib
from bigssl_jax.models import hf_w2v_bert

FORMATS = ("hf",)
ENCODER_GIN = "encoder.gin"
IMPORT_JSON = "import.json"
_SAFETENSORS = "model.safetensors"
_INDEX = "model.safetensors.index.json"


@dataclasses.dataclass(frozen=True)
class ImportedEncoder:
    """What `import_encoder` wrote: the encoder, its front end, where and how big."""

    encoder: encoder_lib.EncoderConfig
    log_mel: frontend.LogMelConfig
    checkpoint: epath.Path
    gin_file: epath.Path
    num_params: int


def _read_json(path: epath.Path, required: bool) -> dict[str, Any] | None:
    if not path.exists():
        if required:
            raise hf_w2v_bert.HfImportError(f"{path} is missing")
        return None
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise hf_w2v_bert.HfImportError(f"{path} is not valid JSON: {error}") from None


def read_safetensors(source: os.PathLike | str) -> dict[str, np.ndarray]:
    """Every tensor of a model directory's safetensors file(s), as numpy arrays.

    Raises:
      HfImportError: no safetensors file, or one that safetensors cannot read.
    """
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    source = paths.as_path(source)
    index = _read_json(source / _INDEX, required=False)
    names = sorted(set(index["weight_map"].values())) if index else [_SAFETENSORS]
    tensors = {}
    for name in names:
        path = source / name
        if not path.exists():
            raise hf_w2v_bert.HfImportError(f"{path} is missing (only safetensors are read)")
        try:
            tensors.update(load_file(os.fspath(path)))
        except (SafetensorError, OSError, ValueError, TypeError) as error:
            message = str(error).splitlines()[0] if str(error) else type(error).__name__
            raise hf_w2v_bert.HfImportError(f"{path} is corrupt: {message}") from None
    return tensors


def gin_text(encoder: encoder_lib.EncoderConfig, log_mel: frontend.LogMelConfig) -> str:
    """gin bindings of every field of `encoder` and `log_mel` (as gin/models/*.gin bind them)."""
    lines = []
    for name, config in (("EncoderConfig", encoder), ("LogMelConfig", log_mel)):
        for field in dataclasses.fields(config):
            lines.append(f"{name}.{field.name} = {getattr(config, field.name)!r}")
    return "\n".join(lines) + "\n"


def import_encoder(
    source: os.PathLike | str, model_dir: os.PathLike | str, *, source_format: str = "hf"
) -> ImportedEncoder:
    """Converts the model directory `source` into a run at `model_dir` (module docstring).

    Raises:
      HfImportError: an unsupported format or architecture, a missing or corrupt file, a
        tensor of the wrong shape (named); the message is one line.
    """
    if source_format not in FORMATS:
        raise hf_w2v_bert.HfImportError(
            f"unsupported format {source_format!r} (supported: {', '.join(FORMATS)})"
        )
    source = paths.as_path(source)
    if not source.is_dir():
        raise hf_w2v_bert.HfImportError(f"{source} is not a directory")
    encoder = hf_w2v_bert.encoder_config(_read_json(source / "config.json", required=True))
    log_mel = hf_w2v_bert.log_mel_config(
        _read_json(source / "preprocessor_config.json", required=False)
    )
    if encoder.input_dim != log_mel.num_mel_bins:
        raise hf_w2v_bert.HfImportError(
            f"config.json wants {2 * encoder.input_dim} stacked features, the feature "
            f"extractor gives 2 x {log_mel.num_mel_bins}"
        )
    params = hf_w2v_bert.convert_params(read_safetensors(source), encoder)
    return _write_run(source, model_dir, encoder, log_mel, params)


def _write_run(
    source: epath.Path,
    model_dir: os.PathLike | str,
    encoder: encoder_lib.EncoderConfig,
    log_mel: frontend.LogMelConfig,
    params: Mapping[str, Any],
) -> ImportedEncoder:
    model_dir = paths.as_path(model_dir)
    checkpointer = checkpointing.Checkpointer(model_dir, async_save=False)
    try:
        checkpointer.save(0, {"step": np.int32(0), "params": {"encoder": params}}, {"step": 0})
    finally:
        checkpointer.close()
    gin_file = model_dir / ENCODER_GIN
    gin_file.write_text(gin_text(encoder, log_mel))
    num_params = sum(int(np.size(x)) for x in jax.tree.leaves(params))
    record = {"format": "hf", "source": os.fspath(source), "num_params": num_params}
    (model_dir / IMPORT_JSON).write_text(json.dumps(record, indent=2) + "\n")
    return ImportedEncoder(
        encoder, log_mel, checkpointing.resolve_init_checkpoint(model_dir), gin_file, num_params
    )
