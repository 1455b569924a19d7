"""The `bertrt` error net: expected errors are one line, bugs a traceback with a request to report,
bytes that are not UTF-8 and Ctrl-C handled; the library never imports the command line."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from bertrt.cli import describe, main

SMALL = '{"data": [{"title": "t", "paragraphs": [{"context": "The cat sat.", "qas": [{"id": "q1", ' \
        '"question": "Who sat?", "answers": [{"text": "The cat", "answer_start": 0}]}]}]}]}'


def _bertrt(*args: str, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "bertrt.cli", *args], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw)


def test_a_bug_shows_its_traceback_and_asks_for_a_report(tmp_path, capsys, monkeypatch):
    data = tmp_path / "d.json"
    data.write_text(SMALL)
    preds = tmp_path / "p.json"
    preds.write_text('{"q1": "The cat"}')

    def broken(dataset, predictions):
        return {}["exact_match"]

    monkeypatch.setattr("bertrt.tasks.squad_metric.evaluate", broken)
    code = main(["evaluate", "--data", str(data), "--predictions", str(preds)])
    err = capsys.readouterr().err
    assert code == 1
    assert err.startswith("Traceback (most recent call last):") and "KeyError: 'exact_match'" in err
    assert err.splitlines()[-1] == ("bertrt evaluate: internal error (KeyError): this is a bug in bertrt; please "
                                    "report it to the bertrt developers with the traceback above")


@pytest.mark.parametrize("exc, line", [
    (OSError(28, "No space left on device", "/data/p.json"),
     "No space left on device: /data/p.json (free some space or write elsewhere)"),
    (PermissionError(13, "Permission denied", "/etc/x"),
     "Permission denied: /etc/x (choose a folder you can write to)"),
    (NotADirectoryError(20, "Not a directory", "/a/file/b"), "Not a directory: /a/file/b"),
    (ImportError("No module named 'onnx'", name="onnx"),
     "the optional package 'onnx' is not installed (pip install it, or the bertrt extra that needs it)"),
    (RecursionError("maximum recursion depth exceeded"), "the input is nested too deeply to read"),
])
def test_expected_errors_read_as_one_line(exc, line):
    assert describe(exc) == line


def test_stdin_that_is_not_utf8():
    proc = _bertrt("qa", "--context", "@-", "--question", "Who?")
    _, err = proc.communicate(b"caf\xe9 au lait", timeout=120)
    assert proc.returncode == 2
    assert err.decode() == ("bertrt qa: error: --context @-: standard input is not UTF-8 text (bad byte at "
                            "offset 3)\n")


def test_ctrl_c_while_waiting_for_stdin_exits_130():
    proc = _bertrt("qa", "--context", "@-", "--question", "Who?", env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        time.sleep(0.5)
        # Wait until the command is reading stdin (its imports are done), then interrupt it; where
        # /proc cannot tell, 30 s is ample for the imports.
        deadline = time.monotonic() + 30
        while not _reading_stdin(proc.pid) and time.monotonic() < deadline:
            assert proc.poll() is None
            time.sleep(0.1)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=10)
    finally:
        proc.kill()
    assert proc.returncode == 130
    assert err.decode() == "bertrt qa: interrupted\n"


def _reading_stdin(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/syscall") as f:
            fields = f.read().split()
        return fields[0] == "0" and int(fields[1], 16) == 0  # read(0, ...)
    except (OSError, IndexError, ValueError):
        return False


def test_the_library_does_not_import_the_command_line():
    code = ("import sys, bertrt.harness.loadgen.runner, bertrt.harness.loadgen.backends, bertrt.loading; "
            "sys.exit('bertrt.cli' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


@pytest.mark.parametrize("argv, line", [
    (["squad", "--data", "d.json", "--out", "p.json", "--batch-size", "many"],
     "bertrt squad: error: argument --batch-size: invalid int value: 'many' (see bertrt squad --help)"),
    (["qa", "--question", "Who?"], "bertrt qa: error: the following arguments are required: --context "
                                   "(see bertrt qa --help)"),
    (["frobnicate"], "bertrt: error: argument COMMAND: invalid choice: 'frobnicate' (choose from "),
])
def test_usage_errors_are_one_line(argv, line, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(line) and err.endswith(" --help)\n") and err.count("\n") == 1
