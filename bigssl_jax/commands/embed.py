"""`bigssl embed`: utterance embeddings of a prepared corpus, and layer-wise probes on them.

    bigssl embed --gin_file=experiments/pretrain_best_rq_small.gin --data_dir=/tmp/demo \\
        --corpus=embedded_small --checkpoint=/tmp/pt_run --output_dir=/tmp/emb_pt \\
        --probes=accent:labeled:dev --probes=speaker:unlabeled.fit:unlabeled.heldout

The gin gives the encoder (`EncoderConfig`, `LogMelConfig`): with `--checkpoint`, the run's
own `config.gin` with the command's `--gin_file` / `--gin_bindings` on top; without, the
command's gin alone. The corpus may be any registered one, not only the run's.
For each split (`--splits`, default all), every utterance's mean-pooled layer outputs (or
one layer, or a classifier's learned layer mix: `--layer`) are written to
`<output_dir>/<split>/` as .npy shards with JSON-lines manifests (`bigssl_jax.jobs.embeddings`);
each process of a multi-host job writes its own shard. `--checkpoint` (a shared flag: run,
checkpoints or step directory) gives the encoder; without it the encoder is randomly
initialised (`--seed`): the baseline a pre-trained encoder is compared with.

`--probes` (repeatable, 'field:train_split:eval_split') then fits one logistic-regression
probe per layer (`bigssl_jax.jobs.probes`) and writes probes.json / .md / .png into
`--output_dir`; `--baseline_dir` adds other runs' probes.json to the table and plot.

Exit codes: 0 done; 1 a user error (one line on stderr).
"""

import json
import pathlib
import sys

from absl import flags

from bigssl_jax.commands import common_flags

_CORPUS = flags.DEFINE_string("corpus", None, "Registered corpus to embed.")
_SPLITS = flags.DEFINE_list("splits", None, "Splits to embed; default: every split.")
_OUTPUT_DIR = flags.DEFINE_string("output_dir", None, "Where the embeddings go.")
_LAYER = flags.DEFINE_string(
    "layer", "all", "'all', 'weighted' (a classifier checkpoint's layer mix) or a layer index."
)
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 16, "Utterances per forward pass.")
_PROBES = flags.DEFINE_multi_string(
    "probes", [], "Layer-wise probe 'field:train_split:eval_split' (repeatable)."
)
_BASELINE_DIR = flags.DEFINE_multi_string(
    "baseline_dir", [], "Another `bigssl embed` output dir whose probes.json to compare with."
)
_NAME = flags.DEFINE_string(
    "name", None, "Name of this run in the probe tables; default from --checkpoint."
)
_SKIP_EXISTING = flags.DEFINE_bool(
    "skip_existing", True, "Do not re-embed a split whose info.json and own shard exist."
)


def _layer(text: str) -> int | str:
    return text if text in ("all", "weighted") else int(text)


def _embed(corpus: str, output_dir: pathlib.Path, data_dir, splits) -> int:
    from bigssl_jax import paths
    from bigssl_jax.data import registry as registry_lib

    try:  # Checked before JAX and TensorFlow are imported: a typo fails fast.
        available = registry_lib.CorpusRegistry(paths.registry_path(data_dir)).splits(corpus)
        unknown = sorted(set(splits or ()) - set(available))
        if unknown:
            raise ValueError(f"corpus '{corpus}' has no splits {unknown} ({sorted(available)})")
    except (registry_lib.CorpusNotFoundError, ValueError) as error:
        print(f"embed: {error} (data dir {data_dir})", file=sys.stderr)
        return 1

    import jax

    from bigssl_jax import configurables, gin_utils
    from bigssl_jax.jobs import embeddings
    from bigssl_tasks import corpus_tasks

    try:
        corpus_tasks.register_corpus_tasks(corpus, data_dir=data_dir)
        if common_flags.CHECKPOINT.value:
            gin_utils.parse_run_config(common_flags.CHECKPOINT.value, common_flags.gin_overrides())
        config = embeddings.EmbedConfig(
            encoder=configurables.EncoderConfig(),
            log_mel=configurables.LogMelConfig(),
            layer=_layer(_LAYER.value),
            batch_size=_BATCH_SIZE.value,
        )
        params = embeddings.load_params(
            config, common_flags.CHECKPOINT.value, seed=common_flags.SEED.value
        )
    except (
        registry_lib.CorpusNotFoundError,
        ValueError,
        FileNotFoundError,
        gin_utils.GinConfigError,
    ) as error:
        print(f"embed: {error} (data dir {data_dir})", file=sys.stderr)
        return 1
    _, own_manifest = embeddings.shard_names(jax.process_index(), jax.process_count())
    for split in splits or sorted(available):
        done = [output_dir / split / name for name in ("info.json", own_manifest)]
        if _SKIP_EXISTING.value and all(path.exists() for path in done):
            print(f"embed: {split}: found {output_dir / split}")
            continue
        info = embeddings.embed_split(
            config,
            params,
            corpus=corpus,
            split=split,
            data_dir=data_dir,
            output_dir=output_dir,
            checkpoint=common_flags.CHECKPOINT.value,
        )
        print(
            f"embed: {split}: {info['num_utterances']} of {info['num_in_registry']} utterances "
            f"(process {jax.process_index()}) -> [{info['layers']}, {info['dim']}] each"
        )
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices("bigssl embed: all shards written")
    return 0


def _probe(output_dir: pathlib.Path) -> int:
    from bigssl_jax.jobs import probes

    try:
        specs = [probes.ProbeSpec.parse(text) for text in _PROBES.value]
        baselines = []
        for directory in _BASELINE_DIR.value:
            path = pathlib.Path(directory) / "probes.json"
            if not path.exists():
                raise FileNotFoundError(f"no probes.json in --baseline_dir {directory}")
            baselines.append(json.loads(path.read_text()))
        name = _NAME.value or ("pre-trained" if common_flags.CHECKPOINT.value else "random init")
        results = probes.run_probes(output_dir, specs, name=name)
    except (ValueError, FileNotFoundError, KeyError) as error:
        print(f"embed: probes: {error}", file=sys.stderr)
        return 1
    written = probes.write_report(output_dir, results, baselines)
    print(probes.markdown(results, baselines))
    print(f"embed: wrote {', '.join(str(path) for path in written.values())}")
    return 0


def main(argv) -> int:
    """Embeds the corpus, then runs the probes."""
    del argv
    if not _CORPUS.value or not _OUTPUT_DIR.value:
        print("embed: --corpus and --output_dir are required", file=sys.stderr)
        return 2
    output_dir = pathlib.Path(_OUTPUT_DIR.value)
    status = _embed(_CORPUS.value, output_dir, common_flags.data_dir(), _SPLITS.value)
    if status or not _PROBES.value:
        return status
    import jax

    return _probe(output_dir) if jax.process_index() == 0 else 0
