"""The command line as a new user meets it: ``mmclshift --help`` and every subcommand's help."""

import pytest

from mmclshift.cli import COMMANDS, main


def test_top_level_help_lists_every_command(capsys):
    # a literal "%" in a command's one-line help (e.g. "95% interval") must not break argparse
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: mmclshift")
    for name in COMMANDS:
        assert name in out
    assert "95% interval" in out  # the claims command's help, printed as written
