"""Every shipped gin file parses against the project's registered configurables."""

import pathlib

import gin
import pytest

from bigssl_jax import (
    configurables,  # noqa: F401  (registers every configurable)
    gin_utils,
    paths,
)

GIN_FILES = sorted(p.relative_to(paths.GIN_DIR) for p in paths.GIN_DIR.rglob("*.gin"))


def test_gin_folder_is_not_empty():
    assert GIN_FILES, f"no gin files under {paths.GIN_DIR}"


@pytest.mark.parametrize("name", [str(p) for p in GIN_FILES])
def test_gin_file_parses(name):
    gin.clear_config()
    try:
        gin_utils.parse([name])
    finally:
        gin.clear_config()


@pytest.mark.parametrize("name", [str(p) for p in GIN_FILES])
def test_gin_file_opens_with_a_header_comment(name):
    first = (paths.GIN_DIR / pathlib.Path(name)).read_text().lstrip().splitlines()[0]
    assert first.startswith("#"), f"{name} must open with a header comment"
