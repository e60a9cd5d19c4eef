"""Gin plumbing: file search, one-line errors, saved configs, and the CLI's exit code 2."""

import dataclasses
import os
import subprocess
import sys

import gin
import pytest

from bigssl_jax import gin_utils


@dataclasses.dataclass(frozen=True)
class _ToyConfig:
    width: int = 4
    depth: int = 2


ToyConfig = gin.external_configurable(_ToyConfig, name="ToyConfig", module="test_gin_utils")


@pytest.fixture(autouse=True)
def _clear_gin():
    gin.clear_config()
    yield
    gin.clear_config()


def test_parse_file_and_binding_and_save(tmp_path):
    (tmp_path / "base.gin").write_text("ToyConfig.width = 8\n")
    (tmp_path / "top.gin").write_text(f"include '{tmp_path / 'base.gin'}'\nToyConfig.depth = 3\n")
    gin_utils.parse([str(tmp_path / "top.gin")], ["ToyConfig.depth = 5"])
    assert ToyConfig() == _ToyConfig(width=8, depth=5)
    config = gin_utils.write_config(tmp_path / "run").read_text()
    assert "ToyConfig.depth = 5" in config and "ToyConfig.width = 8" in config
    operative = gin_utils.write_operative_config(tmp_path / "run").read_text()
    assert "ToyConfig.width = 8" in operative


def test_relative_file_is_searched_in_repo_gin_dir(tmp_path, monkeypatch):
    folder = tmp_path / "extra"
    (folder / "sub").mkdir(parents=True)
    (folder / "sub" / "x.gin").write_text("ToyConfig.width = 16\n")
    monkeypatch.setenv("BIGSSL_GIN_PATH", str(folder))
    monkeypatch.chdir(tmp_path)
    assert gin_utils.resolve_gin_file("sub/x.gin") == folder / "sub" / "x.gin"
    gin_utils.parse(["sub/x.gin"])
    assert ToyConfig().width == 16


@pytest.mark.parametrize(
    "text, expected",
    [
        ("ToyConfig.widht = 3\n", ["doesn't have a parameter named 'widht'", "bad.gin", "line 1"]),
        ("NoSuchThing.x = 3\n", ["No configurable matching 'NoSuchThing'", "bad.gin"]),
        ("ToyConfig.width = (\n", ["bad.gin"]),
        ("include 'missing_include.gin'\n", ["missing_include.gin", "bad.gin"]),
    ],
)
def test_file_errors_are_one_line_with_the_file(tmp_path, text, expected):
    (tmp_path / "bad.gin").write_text(text)
    with pytest.raises(gin_utils.GinConfigError) as info:
        gin_utils.parse([str(tmp_path / "bad.gin")])
    message = str(info.value)
    assert "\n" not in message
    for fragment in expected:
        assert fragment in message


def test_binding_errors_name_the_binding():
    with pytest.raises(gin_utils.GinConfigError) as info:
        gin_utils.parse([], ["ToyConfig.dept = 3"])
    message = str(info.value)
    assert "\n" not in message
    assert "ToyConfig.dept = 3" in message and "--gin_bindings" in message


def test_missing_file_names_searched_folders():
    with pytest.raises(gin_utils.GinConfigError, match="gin file not found: nope/none.gin"):
        gin_utils.parse(["nope/none.gin"])


def test_cli_reports_gin_errors_in_one_line_with_exit_code_2(tmp_path):
    env = dict(os.environ, BIGSSL_DATA_DIR=str(tmp_path))
    result = subprocess.run(
        [sys.executable, "-m", "bigssl_jax.cli", "params", "--gin_bindings=EncoderConfig.nope = 1"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert result.returncode == 2
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("bigssl:")]
    assert len(error_lines) == 1, result.stderr
    assert "EncoderConfig.nope = 1" in error_lines[0]
    assert "Traceback" not in result.stderr


def test_cli_unknown_command_exit_code_2():
    result = subprocess.run(
        [sys.executable, "-m", "bigssl_jax.cli", "no-such-command"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "unknown command 'no-such-command'" in result.stderr


def test_cli_rejects_stray_arguments_with_exit_code_2():
    result = subprocess.run(
        [sys.executable, "-m", "bigssl_jax.cli", "vocab", "--corpus=x", "stray"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "bigssl vocab: unexpected arguments ['stray']" in result.stderr
