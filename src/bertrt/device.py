"""One device resolver: 'auto'/None, 'cpu', 'cuda' or 'cuda:N' -> a ``torch.device`` that exists here.

Example:
    >>> resolve_device("cpu")
    device(type='cpu')
    >>> check_device("gpu")
    Traceback (most recent call last):
    ...
    bertrt.errors.DeviceError: --device 'gpu': expected auto, cpu, cuda or cuda:N
"""

from __future__ import annotations

import re

from bertrt.errors import DeviceError

_DEVICE = re.compile(r"^(auto|cpu|cuda)(?::(\d{1,3}))?$")


def check_device(device: object, *, flag: str = "--device") -> str:
    """The device string, normalised ('auto' for None), when it is well formed; no torch import.

    Raises:
        DeviceError: ``device`` is not 'auto', 'cpu', 'cuda' or 'cuda:N'.
    """
    if device is None:
        return "auto"
    if hasattr(device, "type") and hasattr(device, "index"):  # a torch.device
        device = str(device)
    text = device.strip().lower() if isinstance(device, str) else None
    match = _DEVICE.match(text) if text is not None else None
    if match is None or (match.group(2) is not None and match.group(1) != "cuda"):
        raise DeviceError(f"{flag} {device!r}: expected auto, cpu, cuda or cuda:N")
    return text


def resolve_device(device: object = None, *, flag: str = "--device"):
    """``torch.device`` for ``device``: 'auto'/None -> the current CUDA GPU when there is one, else CPU.

    Args:
        device: None, 'auto', 'cpu', 'cuda', 'cuda:N' or a ``torch.device``.
        flag: how the value is named in messages.

    Raises:
        DeviceError: malformed, CUDA asked for without a GPU, or N beyond the GPUs present.
    """
    import torch

    text = check_device(device, flag=flag)
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resolved = torch.device(text)
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(f"{flag} {text}: no CUDA GPU is available here (use --device cpu)")
        count = torch.cuda.device_count()
        if resolved.index is not None and resolved.index >= count:
            raise DeviceError(f"{flag} {text}: this machine has {count} GPU(s), numbered 0 to {count - 1}")
    return resolved
