"""seqio tasks that classify utterances by a string field of the prepared corpus.

Any string field of the records serves as the label: `speaker`, or an extra manifest field
of the split (`accent`, `voice`, `noise`, `source`, ...). For a field F of corpus C, every
split S that has F gets three tasks (kind `classify_F`, see `task_kind`):

    C_S_classify_F           every utterance of S
    C_S.fit_classify_F       the utterances of S that are not held out
    C_S.heldout_classify_F   the held-out utterances of S (HELDOUT_PERCENT % of them)

The held-out part is decided per utterance by a hash of its id (`heldout_mask`), so it is
the same on every run and host, and a speaker's utterances fall on both sides: training
speakers' held-out utterances test speaker ID. With `bigssl train`, bind
`ExperimentConfig.task_kind = 'classify_speaker'`, `train_split = 'labeled.fit'`,
`eval_split = 'labeled.heldout'`.

Class ids: the field's sorted distinct values over all splits of the corpus, stored next to
the data as `<data_dir>/prepared/<corpus>/labels_<field>.txt` (one label a line, line i =
class i). The file is made on first registration and then read; delete it after changing
the corpus.

Output features: `audio` float32 [S], `targets` int32 [1] (the class id), `confidence` 1.0,
so the batches are those of a labeled task with one target token (`feature_converters`).
"""

import functools
import hashlib
import os
import pathlib
from collections.abc import Sequence

import numpy as np

from bigssl_jax import paths
from bigssl_jax.data import registry as registry_lib
from bigssl_jax.data import schema
from bigssl_tasks import corpus_tasks, preprocessors, registration

KIND_PREFIX = "classify_"
FIT, HELDOUT = "fit", "heldout"
HELDOUT_PERCENT = 20


def task_kind(field: str) -> str:
    """The `ExperimentConfig.task_kind` of classification by `field`."""
    return f"{KIND_PREFIX}{field}"


def field_of_kind(kind: str) -> str | None:
    """The label field of a task kind `classify_<field>`, or None for other kinds."""
    return kind[len(KIND_PREFIX) :] if kind.startswith(KIND_PREFIX) else None


def is_heldout(utterance_id: str, percent: int = HELDOUT_PERCENT) -> bool:
    """Whether an utterance is held out: sha256(id) mod 100 < percent."""
    digest = hashlib.sha256(utterance_id.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % 100 < percent


def heldout_mask(utterance_ids: Sequence[str], percent: int = HELDOUT_PERCENT) -> np.ndarray:
    """`is_heldout` of each id: bool [N]."""
    return np.array([is_heldout(utt, percent) for utt in utterance_ids], bool)


def labels_path(data_dir: os.PathLike, corpus: str, field: str) -> pathlib.Path:
    """Where the label list of `field` of `corpus` is stored."""
    return paths.prepared_dir(data_dir, corpus) / f"labels_{field}.txt"


def _has_field(info: registry_lib.SplitInfo, field: str) -> bool:
    return field == "speaker" or field in info.extra_fields


def read_field(files: Sequence[str], field: str) -> list[str]:
    """The values of string feature `field` of every record of TFRecord `files`, in order."""
    import tensorflow as tf

    spec = {field: tf.io.FixedLenFeature([], tf.string)}
    dataset = tf.data.TFRecordDataset(list(files)).map(
        lambda record: tf.io.parse_single_example(record, spec)[field]
    )
    return [value.decode("utf-8") for value in dataset.as_numpy_iterator()]


def load_labels(data_dir: os.PathLike, corpus: str, field: str) -> tuple[str, ...]:
    """The class names of `field` (class i = line i), made from the corpus on first use.

    Raises:
      registry.CorpusNotFoundError: `corpus` is not registered.
      ValueError: no split of `corpus` has the field.
    """
    path = labels_path(data_dir, corpus, field)
    if path.exists():
        return tuple(path.read_text().splitlines())
    registry = registry_lib.CorpusRegistry(paths.registry_path(data_dir))
    splits = [info for info in registry.splits(corpus).values() if _has_field(info, field)]
    if not splits:
        raise ValueError(f"no split of corpus '{corpus}' has a field '{field}'")
    values = set()
    for info in splits:
        values.update(read_field(info.files, field))
    labels = tuple(sorted(values))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(labels) + "\n")
    return labels


def field_to_class(dataset, *, field: str, labels: Sequence[str]):
    """Adds `targets` = [class id of ex[field]] (int32 [1]) and `confidence` = 1.0.

    A value missing from `labels` fails iteration, naming the utterance.
    """
    import tensorflow as tf

    table = tf.lookup.StaticHashTable(
        tf.lookup.KeyValueTensorInitializer(
            tf.constant(list(labels)), tf.range(len(labels), dtype=tf.int32)
        ),
        default_value=-1,
    )

    def convert(ex):
        index = table.lookup(ex[field])
        message = tf.strings.format(
            "utterance '{}' has {} '{}', not in the label list", (ex["id"], field, ex[field])
        )
        ok = tf.debugging.Assert(index >= 0, [message])
        with tf.control_dependencies([ok]):
            return {**ex, "targets": index[None], "confidence": tf.constant(1.0)}

    return dataset.map(convert, num_parallel_calls=preprocessors.AUTOTUNE)


def select_part(dataset, *, part: str, percent: int = HELDOUT_PERCENT):
    """Keeps the FIT or HELDOUT utterances (`is_heldout` of the id)."""
    import tensorflow as tf

    def heldout(ex):
        return tf.numpy_function(
            lambda utt: is_heldout(utt.decode("utf-8"), percent), [ex["id"]], tf.bool
        )

    if part == HELDOUT:
        return dataset.filter(lambda ex: tf.reshape(heldout(ex), []))
    return dataset.filter(lambda ex: tf.logical_not(tf.reshape(heldout(ex), [])))


def output_features(num_classes: int) -> dict:
    """`audio`, `targets` (one class id, pass-through vocabulary), `confidence`."""
    import seqio
    import tensorflow as tf

    return {
        **corpus_tasks.audio_output_features(),
        "targets": seqio.Feature(
            seqio.PassThroughVocabulary(size=num_classes), add_eos=False, dtype=tf.int32
        ),
        "confidence": seqio.ContinuousFeature(dtype=tf.float32, rank=0),
    }


def register_classification_tasks(
    corpus: str, *, field: str, data_dir: os.PathLike, num_classes: int | None = None
) -> list[str]:
    """Registers the `classify_<field>` tasks of every split of `corpus` that has `field`.

    Args:
      corpus: a registered corpus.
      field: the label field ('speaker' or an extra field).
      data_dir: the data directory (registry, label lists).
      num_classes: the classifier's C; more labels than this is an error.

    Returns:
      The registered task names, sorted.

    Raises:
      registry.CorpusNotFoundError: `corpus` is not registered.
      ValueError: no split has `field`, or it has more than `num_classes` labels.
    """
    labels = load_labels(data_dir, corpus, field)
    if num_classes is not None and len(labels) > num_classes:
        raise ValueError(
            f"field '{field}' of '{corpus}' has {len(labels)} labels but the model has "
            f"num_classes={num_classes} ({labels_path(data_dir, corpus, field)})"
        )
    registry = registry_lib.CorpusRegistry(paths.registry_path(data_dir))
    kind = task_kind(field)
    names = []
    for split, info in sorted(registry.splits(corpus).items()):
        if not _has_field(info, field):
            continue
        extra = tuple(f for f in info.extra_fields if f not in corpus_tasks.HIDDEN_FIELDS)
        base = [preprocessors.check_sample_rate, preprocessors.decode_audio]
        label = functools.partial(field_to_class, field=field, labels=labels)
        for part in (None, FIT, HELDOUT):
            selector = [] if part is None else [functools.partial(select_part, part=part)]
            name = corpus_tasks.task_name(
                corpus, split if part is None else f"{split}.{part}", kind
            )
            names.append(
                registration.add_task(
                    name,
                    signature=("classify", tuple(info.files), field, labels, part, extra),
                    files=info.files,
                    split=corpus_tasks.SPLIT,
                    feature_description=schema.feature_description(
                        labeled=False, extra_fields=extra
                    ),
                    preprocessors=[*selector, *base, label],
                    output_features=output_features(len(labels)),
                    num_examples=info.num_examples if part is None else None,
                )
            )
    return sorted(names)
