"""docs/cli.md is every command's --help, generated (``python -m bnstats.cli.reference``): it cannot go stale."""

from __future__ import annotations

import difflib

import click
import pytest

from bnstats.cli.main import main
from bnstats.cli.reference import COMMAND, WIDTH, reference
from helpers import ROOT, cli

PAGE = ROOT / "docs" / "cli.md"


def stale(written: str, generated: str) -> str | None:
    """None when the page is current, else a message naming the command to run and the first differences."""
    if written == generated:
        return None
    diff = difflib.unified_diff(written.splitlines(), generated.splitlines(), "docs/cli.md", "generated", lineterm="")
    return f"docs/cli.md is stale: run `{COMMAND}` and commit it\n" + "\n".join(list(diff)[:40])


def test_the_reference_is_current():
    message = stale(PAGE.read_text(encoding="utf-8"), reference())
    if message:
        pytest.fail(message, pytrace=False)


def _command(name: str) -> click.Command:
    return main.get_command(click.Context(main), name)


def test_a_changed_help_text_makes_it_stale(monkeypatch):
    written = PAGE.read_text(encoding="utf-8")
    monkeypatch.setattr(_command("merge"), "help", _command("merge").help + "\n\nA sentence added.")
    assert "run `python -m bnstats.cli.reference > docs/cli.md`" in stale(written, reference())
    monkeypatch.undo()
    option = next(p for p in _command("compute").params if p.name == "covariance")
    monkeypatch.setattr(option, "help", "Changed.")
    assert stale(written, reference()) is not None


def test_every_command_is_in_it_as_the_terminal_shows_it(monkeypatch):
    monkeypatch.setenv("COLUMNS", "37")  # the page's width is its own, not the terminal's (78: click's on 80 columns)
    page = reference()
    assert page == PAGE.read_text(encoding="utf-8")
    for name in main.list_commands(click.Context(main)):
        shown = cli(name, "--help", expect=0, terminal_width=WIDTH, prog_name="bnstats").stdout.rstrip()
        assert f"## bnstats {name}\n\n```text\n{shown}\n```" in page, name
