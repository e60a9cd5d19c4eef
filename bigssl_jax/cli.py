"""The `bigssl` console script: one entry point, one subcommand per stage.

    bigssl <command> [--gin_file=F ...] [--gin_bindings=B ...] [--model_dir=D] [flags]

Each command lives in `bigssl_jax/commands/<name>.py`, is imported only when chosen
(so `bigssl make-corpus` does not pay for JAX or TensorFlow), defines its own absl
flags, and exposes `main(argv)`; one that takes positional arguments (file names) sets
`TAKES_ARGUMENTS = True`, others reject them. Gin files and bindings are parsed before `main`
runs. The console shows the command's own lines; the libraries' chatter goes to
`<model_dir>/bigssl.log` or, with `--verbose`, to the console too (`bigssl_jax.console`).

Exit codes (README, "Exit codes"): 0 success; 1 a runtime or data error (a missing corpus or
checkpoint, bad audio with --strict, a non-finite run), one line on stderr; 2 a usage error
(an unknown command, flag or flag value, a missing required flag, stray arguments, a gin
error), one line on stderr; 143 training stopped by SIGTERM / SIGINT after saving a checkpoint.
"""

import importlib
import sys

from absl import app, flags

from bigssl_jax import console, gin_utils, platform_defaults
from bigssl_jax.commands import common_flags

# name -> (module, one-line help)
COMMANDS = {
    "pipeline": ("bigssl_jax.commands.pipeline", "Run the main job end to end on a preset."),
    "experiment": ("bigssl_jax.commands.experiment", "Run an experiment (data-efficiency)."),
    "make-corpus": ("bigssl_jax.commands.make_corpus", "Synthesise the embedded speech corpus."),
    "prepare": ("bigssl_jax.commands.prepare", "Turn audio + transcripts into TFRecord shards."),
    "vocab": ("bigssl_jax.commands.vocab", "Train a sentencepiece vocabulary on a corpus."),
    "show-batches": ("bigssl_jax.commands.show_batches", "Print batches of a seqio task."),
    "params": ("bigssl_jax.commands.params", "Count a model config's parameters."),
    "import-encoder": (
        "bigssl_jax.commands.import_encoder",
        "Import a published pre-trained encoder (w2v-BERT 2.0).",
    ),
    "train": ("bigssl_jax.commands.train", "Train a model from an experiment gin."),
    "train-lm": ("bigssl_jax.commands.train_lm", "Train the shallow-fusion language model."),
    "train-ngram": ("bigssl_jax.commands.train_ngram", "Count a token n-gram LM for fusion."),
    "embed": ("bigssl_jax.commands.embed", "Write utterance embeddings; layer-wise probes."),
    "evaluate": ("bigssl_jax.commands.evaluate", "Score a trained model (WER, accuracy)."),
    "transcribe": ("bigssl_jax.commands.transcribe", "Print transcripts of audio files."),
    "pseudo-label": ("bigssl_jax.commands.pseudo_label", "Transcribe a split with a teacher."),
    "compile": (
        "bigssl_jax.commands.compile",
        "Compile a train step for a TPU topology ahead of time.",
    ),
}


def _usage() -> str:
    width = max(len(name) for name in COMMANDS)
    lines = [
        "usage: bigssl <command> [flags]  (bigssl <command> --help for its flags)",
        "",
        "commands:",
    ]
    lines += [f"  {name:<{width}}  {doc}" for name, (_, doc) in COMMANDS.items()]
    return "\n".join(lines)


def _with_gin(command_main, takes_arguments: bool):
    """Wraps a command's main: check for stray arguments (unless the command takes
    positional arguments, e.g. audio files), parse gin, save the config, run, save the
    operative config."""

    def run(argv):
        console.start(
            argv[0], model_dir=common_flags.MODEL_DIR.value, verbose=common_flags.VERBOSE.value
        )
        if len(argv) > 1 and not takes_arguments:
            print(f"{argv[0]}: unexpected arguments {argv[1:]}", file=sys.stderr)
            return 2
        try:  # before any JAX backend starts (see bigssl_jax/distributed.py)
            common_flags.maybe_initialize_distributed()
        except (ValueError, RuntimeError) as error:
            print(f"bigssl: distributed: {error}", file=sys.stderr)
            return 2
        if common_flags.GIN_FILE.value or common_flags.GIN_BINDINGS.value:
            # Registering every configurable imports JAX; commands given no gin skip it.
            from bigssl_jax import configurables  # noqa: F401

            try:
                gin_utils.parse(common_flags.GIN_FILE.value, common_flags.GIN_BINDINGS.value)
            except gin_utils.GinConfigError as error:
                print(f"bigssl: gin error: {error}", file=sys.stderr)
                return 2
        if common_flags.MODEL_DIR.value:
            gin_utils.write_config(common_flags.MODEL_DIR.value)
        status = command_main(argv)
        if common_flags.MODEL_DIR.value:
            gin_utils.write_operative_config(common_flags.MODEL_DIR.value)
        return status

    return run


def _parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing, with an error as one line and exit code 2 (a usage error)."""
    try:
        return flags.FLAGS(argv)
    except flags.Error as error:
        print(f"{argv[0]}: flag error: {error}", file=sys.stderr)
        sys.exit(2)


def main(argv=None) -> None:
    """Dispatches `bigssl <command> ...` to the command's module."""
    argv = list(sys.argv if argv is None else argv)
    if len(argv) < 2 or argv[1] in ("-h", "--help", "help"):
        print(_usage())
        sys.exit(0 if len(argv) >= 2 else 2)
    name = argv[1]
    if name not in COMMANDS:
        print(f"bigssl: unknown command '{name}'\n\n{_usage()}", file=sys.stderr)
        sys.exit(2)
    console.prepare_environment()  # before any command imports JAX or TensorFlow
    platform_defaults.set_xla_flags()  # XLA reads them when the first backend starts
    console.filter_native_stderr()
    module = importlib.import_module(COMMANDS[name][0])
    # absl's --help lists the key flags of the module named by sys.argv[0]: make those the
    # command's own flags and the common ones.
    for flag in [
        *flags.FLAGS.get_key_flags_for_module(module),
        *flags.FLAGS.get_key_flags_for_module(common_flags),
    ]:
        flags.FLAGS.register_key_flag_for_module(sys.argv[0], flag)
    takes_arguments = getattr(module, "TAKES_ARGUMENTS", False)
    app.run(
        _with_gin(module.main, takes_arguments),
        argv=[f"bigssl {name}", *argv[2:]],
        flags_parser=_parse_flags,
    )


if __name__ == "__main__":
    main()
