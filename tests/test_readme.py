"""The README's commands and figures stay true: the set-up and test commands are the ones CI
runs, the main job is the demo pipeline, and the results it quotes are the published record's
(`bigssl pipeline --preset=demo --publish=docs/results/demo.json` writes docs/results/demo.md)."""

import json
import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
BEGIN, END = "<!-- demo results: docs/results/demo.md -->", "<!-- end demo results -->"


def _code_blocks(text: str) -> list[str]:
    return [block.strip() for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S)]


def test_the_first_three_commands_are_set_up_main_job_and_tests_as_ci_runs_them():
    set_up, main_job, tests = _code_blocks(README)[:3]
    ci = (ROOT / ".ci" / "run").read_text()
    assert set_up.endswith('pip install -e ".[test,tpu-aot,beam]"')
    assert 'pip install -e ".[test,tpu-aot,beam]"' in ci
    assert main_job == "bigssl pipeline --preset=demo"
    assert tests == "pytest -n 2 tests" and "\npytest -n 2 tests\n" in ci


def test_the_quoted_demo_results_are_the_published_record():
    published = (ROOT / "docs" / "results" / "demo.md").read_text().strip()
    quoted = README.split(BEGIN, 1)[1].split(END, 1)[0].strip()
    assert quoted == published
    record = json.loads((ROOT / "docs" / "results" / "demo.json").read_text())
    assert record["command"] == "bigssl pipeline --preset=demo"
    for name, scores in record["arms"].items():  # each row of the table is the record's
        cells = " | ".join(
            f"{scores[split]['wer']:.1f} / {scores[split]['cer']:.1f}"
            for split in ("dev", "test", "test_clean")
        )
        assert f"| {name} | {cells} |" in quoted
