"""Gin at the seams: parse files and bindings with one-line errors, save the config.

Library code never reads gin. Entry points (`bigssl <command>`) call `parse` once,
after `bigssl_jax.configurables` has registered every configurable, and
`write_config` / `write_operative_config` to leave the config beside the run (the run
directory may be a `gs://` URI; in a multi-process job process 0 writes). A command that
loads a trained run rebuilds its model here, from the run's `config.gin` (`run_model`,
`load_model`), and hands the model to `bigssl_jax.inference`.

Gin files are looked up as given, then relative to the repository's `gin/` folder
(so `--gin_file=models/L.gin` works from any directory), then under each folder of
`$BIGSSL_GIN_PATH` (colon-separated).
"""

import contextlib
import logging
import os
import pathlib
import re
import tokenize
from collections.abc import Sequence

import gin
from etils import epath

from bigssl_jax import paths


class GinConfigError(ValueError):
    """A gin file or binding could not be parsed; the message is one line."""


def search_path() -> list[pathlib.Path]:
    """Folders searched for a relative `--gin_file`, in order."""
    extra = [pathlib.Path(p) for p in os.environ.get("BIGSSL_GIN_PATH", "").split(":") if p]
    return [pathlib.Path.cwd(), paths.GIN_DIR, *extra]


def _open_uri(path: str):
    return epath.Path(path).open()


def _is_uri_file(path: str) -> bool:
    return "://" in path and epath.Path(path).is_file()


# gin opens files with `open`; a run's config.gin may be at a URI (`gs://bucket/run/...`).
gin.config.register_file_reader(_open_uri, _is_uri_file)


def resolve_gin_file(name: str) -> pathlib.Path | epath.Path:
    """Finds a gin file by name; raises GinConfigError naming the folders searched.

    A URI (`gs://bucket/run/config.gin`) is taken as it is.
    """
    if "://" in name:
        if _is_uri_file(name):
            return epath.Path(name)
        raise GinConfigError(f"gin file not found: {name}")
    path = pathlib.Path(name)
    if path.is_absolute():
        if path.is_file():
            return path
        raise GinConfigError(f"gin file not found: {name}")
    for folder in search_path():
        candidate = folder / path
        if candidate.is_file():
            return candidate
    searched = ", ".join(str(f) for f in search_path())
    raise GinConfigError(f"gin file not found: {name} (searched {searched})")


def _one_line(error: Exception) -> str:
    """Folds gin's multi-line message ('msg\\n  In file "f", line 3\\n    text') into one line."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    if not lines:
        return type(error).__name__
    message, rest = lines[0], lines[1:]
    where = next((line for line in rest if line.startswith("In ")), None)
    binding = next((line for line in rest if not line.startswith("In ") and line != "^"), None)
    parts = [message.rstrip(".")]
    if where:
        parts.append(where[0].lower() + where[1:])
    if binding:
        parts.append(f"binding: {binding}")
    return "; ".join(parts)


@contextlib.contextmanager
def _quiet_gin_search():
    """Silences gin's per-folder 'Path not found' log lines while it searches for includes."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        root.setLevel(level)


_ADDED_SEARCH_PATHS: set[str] = set()


def parse(gin_files: Sequence[str] = (), gin_bindings: Sequence[str] = ()) -> None:
    """Parses gin files (in order, with includes) and then bindings.

    Args:
      gin_files: file names, resolved with `resolve_gin_file`.
      gin_bindings: binding strings such as `EncoderConfig.num_layers = 4`.

    Raises:
      GinConfigError: one line naming the file (or "bindings") and the offending binding.
    """
    for folder in search_path():
        if str(folder) not in _ADDED_SEARCH_PATHS:
            gin.add_config_file_search_path(str(folder))
            _ADDED_SEARCH_PATHS.add(str(folder))
    for name in gin_files:
        path = resolve_gin_file(name)
        try:
            with _quiet_gin_search():
                gin.parse_config_file(str(path))
        except (ValueError, SyntaxError, tokenize.TokenError, KeyError, TypeError) as error:
            message = _one_line(error)
            if str(path) not in message:
                message = f"{message} (in {path})"
            raise GinConfigError(message) from error
        except OSError as error:
            raise GinConfigError(f"{_one_line(error)} (included from {path})") from error
    for binding in gin_bindings:
        try:
            gin.parse_config(binding)
        except (ValueError, SyntaxError, tokenize.TokenError, KeyError, TypeError) as error:
            message = _one_line(error)
            if binding.strip() not in message:
                message = f"{message}; binding: {binding.strip()}"
            raise GinConfigError(
                re.sub(r"in bindings string line \d+", "in --gin_bindings", message)
            ) from error


def bound_fields(configurable: str, fields: Sequence[str]) -> set[str]:
    """Which of `fields` the parsed gin binds for `configurable` (unscoped), e.g.
    bound_fields('EncoderConfig', ('dtype', 'remat_policy')) -> {'dtype'}."""
    bound = set()
    for field in fields:
        try:
            gin.query_parameter(f"{configurable}.{field}")
        except ValueError:
            continue
        bound.add(field)
    return bound


def write_config(model_dir: os.PathLike | str, name: str = "config.gin") -> epath.Path:
    """Writes every parsed binding (what the user asked for) to `model_dir/name`."""
    return _write(model_dir, name, gin.config_str())


def write_operative_config(
    model_dir: os.PathLike | str, name: str = "operative_config.gin"
) -> epath.Path:
    """Writes the bindings that were actually used (gin's operative config)."""
    return _write(model_dir, name, gin.operative_config_str())


def _write(model_dir: os.PathLike | str, name: str, text: str) -> epath.Path:
    """Writes `text` to `model_dir/name` (a local path or a URI) through a temporary file.

    In a multi-process job only process 0 writes; every process returns the path.
    """
    import jax  # noqa: PLC0415  (only writers need it)

    path = paths.as_path(model_dir) / name
    if jax.process_index() == 0:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(text)
        tmp.replace(path)
    return path


# ---------------------------------------------------------------------------------------
# Trained runs: their models, rebuilt from the gin they were trained with.
# ---------------------------------------------------------------------------------------


def parse_run_config(
    checkpoint: os.PathLike | str, overrides: tuple[Sequence[str], Sequence[str]] = ((), ())
) -> epath.Path:
    """Clears gin and parses a run's `config.gin`, then `overrides` on top.

    Args:
      checkpoint: a run directory, its `checkpoints/` or one step directory.
      overrides: (gin files, gin bindings) parsed after the run's config (a command's
        `--gin_file` / `--gin_bindings`, e.g. another `ExperimentConfig.corpus`). A run
        without `config.gin` is described by the override files alone.

    Returns:
      The run directory.

    Raises:
      FileNotFoundError: no finalised checkpoint, or no config.gin and no override file.
      GinConfigError: the run's config or an override does not parse.
    """
    from bigssl_jax import checkpointing, inference

    run_dir = inference.run_dir_of(checkpointing.resolve_init_checkpoint(checkpoint))
    config = run_dir / inference.CONFIG_FILE
    files, bindings = overrides
    run_config = [str(config)] if config.exists() else []
    if not run_config and not files:
        raise FileNotFoundError(f"{config} not found: pass the run's gin with --gin_file")
    gin.clear_config()
    parse([*run_config, *files], bindings)
    return run_dir


def run_model(
    checkpoint: os.PathLike | str,
    *,
    own_config: bool = False,
    overrides: tuple[Sequence[str], Sequence[str]] = ((), ()),
):
    """`ExperimentConfig.model` of a run, built from its `config.gin` with `overrides` on top
    (`parse_run_config`: afterwards the gin holds exactly those).

    Args:
      checkpoint: a run directory, its `checkpoints/` or one step directory.
      own_config: build it from the run's own config alone, in a gin cleared before and
        after (a fused LM, read after everything else was read from gin); `overrides` are
        not applied.
      overrides: (gin files, gin bindings), e.g. a command's `common_flags.gin_overrides()`.

    Raises:
      FileNotFoundError: no finalised checkpoint, or no config.gin (and no override file) to
        rebuild the model.
      GinConfigError: the run's config or an override does not parse.
      ValueError: the gin binds no `ExperimentConfig.model`.
    """
    from bigssl_jax import configurables

    run_dir = parse_run_config(checkpoint, ((), ()) if own_config else overrides)
    model = configurables.ExperimentConfig().model
    if own_config:
        gin.clear_config()
    if model is None:
        raise ValueError(f"the gin config of {run_dir} binds no ExperimentConfig.model")
    return model


def load_model(
    checkpoint: os.PathLike | str,
    *,
    ema: bool = True,
    own_config: bool = False,
    overrides: tuple[Sequence[str], Sequence[str]] = ((), ()),
):
    """`inference.load_model` of the run at `checkpoint` with its model from `run_model`."""
    from bigssl_jax import inference

    model = run_model(checkpoint, own_config=own_config, overrides=overrides)
    return inference.load_model(checkpoint, model, ema=ema)


def load_fusion_lm(checkpoint: os.PathLike | str | None):
    """The LM a resolved `--lm_checkpoint` names (`inference.resolve_lm_checkpoint`), or None:
    an n-gram run's counted LM (`inference.load_ngram_run`), or a Transformer LM run restored
    with the model of its own config (gin cleared before and after)."""
    from bigssl_jax import inference

    if not checkpoint:
        return None
    if inference.is_ngram_run(checkpoint):
        return inference.load_ngram_run(checkpoint)
    return load_model(checkpoint, own_config=True)
