"""README.md's console examples are real: each `$ convcli …` prints exactly what the README shows."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from click.testing import CliRunner

from convcli.cli import cli

REPO = Path(__file__).resolve().parent.parent


def console_examples() -> list[tuple[str, str]]:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    examples = []
    for block in re.findall(r"```console\n(.*?)```", text, flags=re.S):
        for chunk in re.split(r"^(?=\$ )", block, flags=re.M):
            if chunk.startswith("$ convcli "):
                command, _, expected = chunk.partition("\n")
                examples.append((command[2:], expected))
    return examples


EXAMPLES = console_examples()


def test_the_readme_has_console_examples():
    assert len(EXAMPLES) >= 4


@pytest.mark.parametrize("command, expected", EXAMPLES, ids=[c for c, _ in EXAMPLES])
def test_readme_console_example(command, expected, monkeypatch):
    monkeypatch.chdir(REPO)
    result = CliRunner().invoke(cli, shlex.split(command)[1:], catch_exceptions=False)
    assert result.exit_code == 0, result.stderr
    assert result.stdout == expected


def test_files_the_readme_and_help_name_exist():
    from convcli import cli as cli_module

    text = (REPO / "README.md").read_text(encoding="utf-8") + Path(cli_module.__file__).read_text(encoding="utf-8")
    named = set(re.findall(r"\b((?:sample_images|examples|kernels|docs|benchmarks|tools)/[\w./-]*\w)", text))
    assert named
    missing = sorted(path for path in named if not (REPO / path).exists())
    assert not missing, missing
