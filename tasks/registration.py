"""Idempotent registration into seqio's global Task registry.

Registering the same name twice with the same definition is a no-op; with a different
definition (new shards, another vocabulary) the old entry is replaced. A definition is
compared through a hashable `signature` the caller builds from what defines it.
"""

import re
from collections.abc import Callable, Hashable, Mapping, Sequence

_SIGNATURES: dict[tuple[str, str], Hashable] = {}
_INVALID_NAME_CHARS = re.compile(r"[^\w.:]")


def sanitize_name(name: str) -> str:
    """A seqio-valid task name: characters outside [A-Za-z0-9_.:] become '_'."""
    return _INVALID_NAME_CHARS.sub("_", name)


def _is_current(kind: str, name: str, names, signature: Hashable) -> bool:
    return name in names and _SIGNATURES.get((kind, name)) == signature


def add_task(
    name: str,
    *,
    signature: Hashable,
    files: Sequence[str],
    split: str,
    feature_description: Mapping,
    preprocessors: Sequence[Callable],
    output_features: Mapping,
    num_examples: int | None = None,
    shuffle_buffer_size: int = 1000,
) -> str:
    """Registers (or replaces) a `seqio.Task` reading TFRecord `files` as `split`.

    Args:
      name: task name (seqio-valid, see `sanitize_name`).
      signature: what defines the task; an equal signature means "already registered".
      files: TFRecord shards (paths or glob patterns).
      split: the seqio split name the files are exposed under.
      feature_description: `tf.io.parse_single_example` spec of one record.
      preprocessors: seqio preprocessors, in order.
      output_features: seqio output features.
      num_examples: records in `files`, when known (used by rate-by-size mixtures).
      shuffle_buffer_size: default example shuffle buffer of the task.

    Returns:
      `name`.
    """
    import seqio

    if _is_current("task", name, seqio.TaskRegistry.names(), signature):
        return name
    seqio.TaskRegistry.remove(name)
    source = seqio.TFExampleDataSource(
        split_to_filepattern={split: list(files)},
        feature_description=dict(feature_description),
        num_input_examples=None if num_examples is None else {split: num_examples},
    )
    seqio.TaskRegistry.add(
        name,
        source=source,
        output_features=dict(output_features),
        preprocessors=list(preprocessors),
        shuffle_buffer_size=shuffle_buffer_size,
    )
    _SIGNATURES[("task", name)] = signature
    return name
