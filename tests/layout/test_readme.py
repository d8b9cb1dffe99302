"""The README is a page a user follows: its quickstart runs, its set-up commands are the ones CI runs.

* The ``python`` code block under "## Quickstart" runs as written, in a fresh interpreter, in an
  empty temporary folder (it writes ``catalog.rpak`` there), within a time limit.
* The two set-up commands appear verbatim in ``bash`` code blocks, and the test command is also a
  line of ``.ci/run`` (so what a user types is what CI runs).
* The command table lists exactly the commands of ``reelpack --help``; every relative link of the
  README names a file of the checkout.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"

DEMO_COMMAND = 'pip install -e ".[all]" -c constraints.txt && reelpack demo'
TEST_COMMAND = 'pip install -e ".[all,test]" -c constraints.txt && python -m pytest -q'

_FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```\s*$", re.M | re.S)


def _text() -> str:
    return README.read_text(encoding="utf-8")


def _section(text: str, heading: str) -> str:
    """The body of the level-2 section ``heading`` (up to the next level-2 heading)."""
    m = re.search(rf"^## {re.escape(heading)}\s*$(.*?)(?=^## |\Z)", text, re.M | re.S)
    assert m, f"README.md has no '## {heading}' section"
    return m.group(1)


def _blocks(text: str, lang: str) -> list[str]:
    return [body for tag, body in _FENCE.findall(text) if tag == lang]


def test_quickstart_runs(tmp_path: Path) -> None:
    blocks = _blocks(_section(_text(), "Quickstart"), "python")
    assert len(blocks) == 1, f"expected one python block under '## Quickstart', found {len(blocks)}"
    code = blocks[0]
    assert "import reelpack" in code
    for name in ("make_codec", "write_pack", "PackReader", "make_scanner"):
        assert f"reelpack.{name}" in code, f"the quickstart should use reelpack.{name}"
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, f"quickstart failed:\n{proc.stdout}\n{proc.stderr}"
    assert (tmp_path / "catalog.rpak").is_file()
    assert proc.stdout.strip(), "the quickstart prints its top items"


def test_setup_commands_verbatim() -> None:
    lines = {line.strip() for block in _blocks(_section(_text(), "Set up"), "bash") for line in block.splitlines()}
    assert DEMO_COMMAND in lines, f"README.md 'Set up' should show: {DEMO_COMMAND}"
    assert TEST_COMMAND in lines, f"README.md 'Set up' should show: {TEST_COMMAND}"


def test_ci_runs_the_readme_test_command() -> None:
    ci = ROOT / ".ci" / "run"
    assert ci.is_file(), ".ci/run is missing"
    lines = [line.strip() for line in ci.read_text(encoding="utf-8").splitlines()]
    assert TEST_COMMAND in lines, f".ci/run should contain the README's test command verbatim: {TEST_COMMAND}"


def test_constraints_file_exists() -> None:
    assert (ROOT / "constraints.txt").is_file(), "the set-up commands install with -c constraints.txt"


def test_command_table_matches_cli() -> None:
    typer = pytest.importorskip("typer")
    from reelpack.cli import app

    commands = set(typer.main.get_command(app).commands)
    table = set(re.findall(r"^\| `reelpack ([a-z0-9-]+)` \|", _section(_text(), "Command line"), re.M))
    assert table == commands, f"README lists {sorted(table - commands)} not in the CLI; misses {sorted(commands - table)}"


def test_relative_links_exist() -> None:
    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", _text())
    local = [link for link in links if "://" not in link]
    assert local, "README.md links to docs/"
    missing = [link for link in local if not (ROOT / link).exists()]
    assert not missing, f"README.md links to missing files: {missing}"
