"""One device resolver: well-formed strings only, and only devices that exist here."""

from __future__ import annotations

import re

import pytest
import torch

from bertrt.device import check_device, check_devices, resolve_device, resolve_devices
from bertrt.errors import DeviceError


@pytest.mark.parametrize("text, expected", [(None, "auto"), ("auto", "auto"), ("CPU", "cpu"), (" cuda ", "cuda"),
                                            ("cuda:3", "cuda:3"), (torch.device("cpu"), "cpu")])
def test_well_formed(text, expected):
    assert check_device(text) == expected


@pytest.mark.parametrize("text", ["gpu", "cpu:0", "cuda:", "cuda:-1", "cuda:1:2", "", "mps", "cuda0", 3])
def test_malformed(text):
    with pytest.raises(DeviceError, match="expected auto, cpu, cuda or cuda:N"):
        check_device(text)


def test_cpu_and_auto():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(None).type == ("cuda" if torch.cuda.is_available() else "cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_cuda_without_a_gpu():
    with pytest.raises(DeviceError, match=r"--device cuda: no CUDA GPU is available here \(use --device cpu\)"):
        resolve_device("cuda")


def test_gpu_index_beyond_the_gpus_present():
    if not torch.cuda.is_available():
        pytest.skip("needs a GPU")
    n = torch.cuda.device_count()
    with pytest.raises(DeviceError, match=f"this machine has {n} GPU"):
        resolve_device(f"cuda:{n}")


def test_device_lists_and_their_examples():
    import doctest

    import bertrt.device

    assert doctest.testmod(bertrt.device, optionflags=doctest.ELLIPSIS).failed == 0
    assert check_devices(" CUDA:0 ,cuda:1") == ("cuda:0", "cuda:1")
    assert check_devices(["cpu", "cpu", "cpu"]) == ("cpu", "cpu", "cpu")  # CPU "devices" repeat: a testing aid
    assert check_devices("ALL") == ("all",)


@pytest.mark.parametrize("text, message", [
    ("", "expected all, or a comma-separated list"),
    ("cuda:0,", "(got '' in the list)"),
    ("all,all", "(got 'all' in the list)"),
    ("auto,cpu", "(got 'auto' in the list)"),
    ("cpu:0,cpu", "(got 'cpu:0' in the list)"),
    ("cuda,cpu", "mixes CPU and CUDA devices"),
    ("cuda:2,cuda:0,cuda:2", "cuda:2 is listed twice"),
])
def test_malformed_device_lists(text, message):
    with pytest.raises(DeviceError, match=re.escape(message)):
        check_devices(text)


def test_cpu_device_lists_resolve_without_a_gpu():
    assert resolve_devices("cpu,cpu") == [torch.device("cpu")] * 2


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_gpu_lists_without_a_gpu():
    with pytest.raises(DeviceError, match=re.escape("--devices all: no CUDA GPU is visible here")):
        resolve_devices("all")
    with pytest.raises(DeviceError, match=re.escape("--devices cuda:0,cuda:1: no CUDA GPU is available here")):
        resolve_devices("cuda:0,cuda:1")


def test_gpu_lists_on_a_gpu():
    if not torch.cuda.is_available():
        pytest.skip("needs a GPU")
    n = torch.cuda.device_count()
    assert resolve_devices("all") == [torch.device("cuda", i) for i in range(n)]
    with pytest.raises(DeviceError, match="listed twice"):
        resolve_devices(f"cuda,cuda:{torch.cuda.current_device()}")
    with pytest.raises(DeviceError, match=f"this machine has {n} GPU"):
        resolve_devices(f"cuda:0,cuda:{n}")
