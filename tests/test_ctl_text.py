"""What naivectl and naived print: replies rendered, help texts (no daemon needed)."""

from __future__ import annotations

import click
from click.testing import CliRunner

from naived import cli, ctl
from naived.core.messages import History
from naived.ctl import history_lines


def test_history_says_so_before_the_first_finished_cycle() -> None:
    assert history_lines(History("XRPUSDT", [])) == [
        "XRPUSDT: no finished cycle yet (a cycle finishes when its sell fills; naivectl status XRPUSDT shows the open ones)"]


def test_every_command_and_option_has_help_that_is_not_cut() -> None:
    for group in (cli.main, ctl.main):
        assert isinstance(group, click.Group)
        listing = CliRunner().invoke(group, ["--help"], terminal_width=80).output.partition("Commands:")[2]
        assert listing and "..." not in listing, listing  # click cuts a long first sentence with "..."
        for name, command in group.commands.items():
            assert command.short_help or command.help, name
            for param in command.params:
                assert not isinstance(param, click.Option) or param.help, f"{name} {param.name} has no help"
