"""`bigssl import-encoder`: turn a published pre-trained encoder into a run of ours.

    bigssl import-encoder --format=hf --source=/models/w2v-bert-2.0 --model_dir=/runs/w2v_bert_2
    bigssl train --gin_file=experiments/finetune_ctc_w2v_bert_2.gin \
        --gin_bindings="TrainerConfig.init_checkpoint = '/runs/w2v_bert_2'" ...

Reads a HuggingFace `Wav2Vec2BertModel` directory (config.json, model.safetensors) and writes
an Orbax checkpoint of its encoder plus `encoder.gin`, the bindings of the matching encoder
and front end (`jobs.import_encoder`). Exit codes: 0 imported; 1 an unsupported architecture,
a missing or corrupt file, or a tensor of the wrong shape (one line on stderr, naming it);
2 a usage error.
"""

import sys

from absl import flags

from bigssl_jax.commands import common_flags

_FORMAT = flags.DEFINE_enum("format", "hf", ["hf"], "Format of --source: 'hf' (transformers).")
_SOURCE = flags.DEFINE_string("source", None, "The model directory to import.")


def main(argv) -> int:
    del argv
    if not _SOURCE.value or not common_flags.MODEL_DIR.value:
        print("import-encoder: --source and --model_dir are required", file=sys.stderr)
        return 2
    from bigssl_jax.jobs import import_encoder
    from bigssl_jax.models import hf_w2v_bert

    try:
        imported = import_encoder.import_encoder(
            _SOURCE.value, common_flags.MODEL_DIR.value, source_format=_FORMAT.value
        )
    except hf_w2v_bert.HfImportError as error:
        print(f"import-encoder: {error}", file=sys.stderr)
        return 1
    print(
        f"import-encoder: {imported.num_params:,d} encoder params -> {imported.checkpoint}; "
        f"its gin: {imported.gin_file} (fine-tune with TrainerConfig.init_checkpoint = "
        f"'{common_flags.MODEL_DIR.value}')"
    )
    return 0
