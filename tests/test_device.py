"""One device resolver: well-formed strings only, and only devices that exist here."""

from __future__ import annotations

import pytest
import torch

from bertrt.device import check_device, resolve_device
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
