"""`bertrt serve` as a command: its help, settings refused with one line before anything loads, and
several worker processes behind one port."""

from __future__ import annotations

import os
import re
import signal
import socket

import httpx
import pytest

from bertrt.cli import main

from serve_testing import serve_command

CONTEXT = "The cat sat on the mat in the kitchen of the old house."
QUESTION = "Where did the cat sit?"


def test_help_names_the_routes_and_options(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["serve", "--help"])
    out = capsys.readouterr().out
    assert exit_info.value.code == 0
    for text in ("/v1/qa", "--max-batch-tokens", "--max-delay-ms", "--max-queue-tokens", "--timeout-s", "--ray",
                 "--replicas", "--num-gpus-per-replica", "--workers", "--model-process", "SIGTERM"):
        assert text in out


@pytest.mark.parametrize("flag", ["--max-batch-tokens", "--max-queue-tokens", "--timeout-s", "--workers"])
def test_non_positive_limits_are_refused(flag, capsys):
    assert main(["serve", flag, "0"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("bertrt serve: error:") and "must be positive" in err and len(err.splitlines()) == 1


def test_a_negative_batching_delay_is_refused(capsys):
    assert main(["serve", "--max-delay-ms", "-1"]) == 2
    err = capsys.readouterr().err
    assert "max_delay_ms must not be negative, got -1" in err and len(err.splitlines()) == 1


@pytest.mark.parametrize("port", ["65536", "-1", "http"])
def test_a_port_out_of_range_is_refused_by_the_arguments(port, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["serve", "--port", port])
    assert exit_info.value.code == 2
    assert "--port" in capsys.readouterr().err


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_port_in_use_is_refused_before_the_model_loads(workers, capsys, monkeypatch):
    import bertrt.serve.model

    def no_loading(*args, **kwargs):
        raise AssertionError("the model was loaded")
    monkeypatch.setattr(bertrt.serve.model.ServedModel, "load", no_loading)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["serve", "--port", str(port), "--workers", workers, "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == f"bertrt serve: error: 127.0.0.1:{port} is in use (another server?): stop it, or pick another --port"


def test_a_host_that_is_not_this_machine_s_is_refused(capsys):
    assert main(["serve", "--host", "192.0.2.1", "--device", "cpu"]) == 2  # TEST-NET-1: never local
    assert "--host 192.0.2.1 is not an address of this machine" in capsys.readouterr().err


@pytest.mark.slow
def test_workers_share_the_port_answer_alike_and_stop_on_sigterm(tmp_path):
    log = tmp_path / "serve.log"
    with serve_command(log, "--workers", "2", "--log-level", "info", workers=2) as (proc, base):
        workers = set(re.findall(r"Started server process \[(\d+)\]", log.read_text()))
        assert len(workers) == 2 and str(proc.pid) not in workers
        answers = set()
        for _ in range(8):  # a new connection each time, accepted by whichever worker takes it
            reply = httpx.post(f"{base}/v1/qa", json={"question": QUESTION, "context": CONTEXT}, timeout=30)
            assert reply.status_code == 200, reply.text
            answers.add(reply.json()["answer"])
        assert len(answers) == 1 and answers.pop() in CONTEXT
        assert httpx.get(f"{base}/ready", timeout=5).status_code == 200
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
    for pid in workers:  # the workers drained and exited with the supervisor
        assert not os.path.exists(f"/proc/{pid}") or "zombie" in open(f"/proc/{pid}/status").read().lower()
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{base}/health", timeout=2)
