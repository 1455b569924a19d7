"""`bertrt serve` as a command: its help, and settings refused with one line before anything loads."""

from __future__ import annotations

import pytest

from bertrt.cli import main


def test_help_names_the_routes_and_options(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["serve", "--help"])
    out = capsys.readouterr().out
    assert exit_info.value.code == 0
    for text in ("/v1/qa", "--max-batch-tokens", "--max-delay-ms", "--max-queue-tokens", "--timeout-s", "--ray",
                 "--replicas", "--num-gpus-per-replica", "SIGTERM"):
        assert text in out


@pytest.mark.parametrize("flag", ["--max-batch-tokens", "--max-queue-tokens", "--timeout-s"])
def test_non_positive_limits_are_refused(flag, capsys):
    assert main(["serve", flag, "0"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("bertrt serve: error:") and "must be positive" in err and len(err.splitlines()) == 1
