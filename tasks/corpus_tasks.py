"""seqio tasks over the prepared corpora of the corpus registry.

For every registered split `<corpus>/<split>` (names sanitised for seqio):

    <corpus>_<split>_unlabeled   audio only, for self-supervised pre-training. The
                                 transcript fields (`text`, `oracle_text`) are never parsed.
    <corpus>_<split>_labeled     audio + tokenised, normalised `text` as `targets`, plus
                                 `confidence` = 1.0 (labeled splits only, needs a vocabulary).

Every task exposes its records as the single seqio split `SPLIT` ("all": the whole
registry split) so that tasks from different registry splits mix in one seqio Mixture.
Besides the output features, examples carry the string fields `id`, `speaker` and the
split's extra manifest fields (e.g. `accent`), so a pipeline can keep them as labels;
labeled tasks also carry `targets_pretokenized` (the normalised transcript).

Output features:
    audio       float32 [S], 16 kHz samples in [-1, 1)
    targets     int32 [L] sentencepiece ids, no EOS (labeled / pseudo-labeled)
    confidence  float32 [] (labeled: 1.0; pseudo-labeled: the teacher's score)
"""

import os

from bigssl_jax import paths
from bigssl_jax.data import registry as registry_lib
from bigssl_jax.data import schema
from bigssl_tasks import preprocessors, registration, vocab

SPLIT = "all"
HIDDEN_FIELDS = (schema.TEXT_FIELD, schema.ORACLE_TEXT_FIELD)


def task_name(corpus: str, split: str, kind: str) -> str:
    """`<corpus>_<split>_<kind>` made seqio-valid; kind is "unlabeled" or "labeled"."""
    return registration.sanitize_name(f"{corpus}_{split}_{kind}")


def audio_output_features() -> dict:
    """Output features of an unlabeled task."""
    import seqio
    import tensorflow as tf

    return {"audio": seqio.ContinuousFeature(dtype=tf.float32, rank=1)}


def labeled_output_features(vocab_path: os.PathLike) -> dict:
    """Output features of a labeled or pseudo-labeled task."""
    import seqio
    import tensorflow as tf

    return {
        **audio_output_features(),
        "targets": seqio.Feature(
            vocab.get_vocabulary(str(vocab_path)), add_eos=False, dtype=tf.int32
        ),
        "confidence": seqio.ContinuousFeature(dtype=tf.float32, rank=0),
    }


def labeled_preprocessors() -> list:
    """Preprocessors of a labeled or pseudo-labeled task (records with a `text` field)."""
    return [
        preprocessors.check_sample_rate,
        preprocessors.decode_audio,
        preprocessors.text_to_targets,
        preprocessors.tokenize_targets,
        preprocessors.add_confidence,
    ]


def register_unlabeled_task(
    name: str, *, files, extra_fields=(), num_examples: int | None = None
) -> str:
    """Registers an audio-only task over TFRecord `files` of the prepared layout."""
    extra_fields = tuple(f for f in extra_fields if f not in HIDDEN_FIELDS)
    return registration.add_task(
        name,
        signature=("unlabeled", tuple(files), extra_fields),
        files=files,
        split=SPLIT,
        feature_description=schema.feature_description(labeled=False, extra_fields=extra_fields),
        preprocessors=[preprocessors.check_sample_rate, preprocessors.decode_audio],
        output_features=audio_output_features(),
        num_examples=num_examples,
    )


def register_labeled_task(
    name: str, *, files, vocab_path: os.PathLike, extra_fields=(), num_examples: int | None = None
) -> str:
    """Registers an audio + transcript task over labeled TFRecord `files`."""
    extra_fields = tuple(f for f in extra_fields if f not in HIDDEN_FIELDS)
    return registration.add_task(
        name,
        signature=("labeled", tuple(files), str(vocab_path), extra_fields),
        files=files,
        split=SPLIT,
        feature_description=schema.feature_description(labeled=True, extra_fields=extra_fields),
        preprocessors=labeled_preprocessors(),
        output_features=labeled_output_features(vocab_path),
        num_examples=num_examples,
    )


def register_corpus_tasks(
    corpus: str, *, data_dir: os.PathLike, vocab_path: os.PathLike | None = None
) -> list[str]:
    """Registers the tasks of every split of `corpus` (idempotent).

    Args:
      corpus: a corpus name of the registry at `<data_dir>/registry.json`.
      data_dir: the data directory.
      vocab_path: sentencepiece model for the labeled tasks; None registers only the
        unlabeled ones.

    Returns:
      The registered task names, sorted.

    Raises:
      registry.CorpusNotFoundError: `corpus` is not registered.
    """
    registry = registry_lib.CorpusRegistry(paths.registry_path(data_dir))
    names = []
    for split, info in sorted(registry.splits(corpus).items()):
        names.append(
            register_unlabeled_task(
                task_name(corpus, split, "unlabeled"),
                files=info.files,
                extra_fields=info.extra_fields,
                num_examples=info.num_examples,
            )
        )
        if info.labeled and vocab_path is not None:
            names.append(
                register_labeled_task(
                    task_name(corpus, split, "labeled"),
                    files=info.files,
                    vocab_path=vocab_path,
                    extra_fields=info.extra_fields,
                    num_examples=info.num_examples,
                )
            )
    return sorted(names)
