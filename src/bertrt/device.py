"""One device resolver: 'auto'/None, 'cpu', 'cuda' or 'cuda:N' -> a ``torch.device`` that exists here;
and one for lists of devices (``--devices cuda:0,cuda:1``, ``all``) that run one engine each.

Example:
    >>> resolve_device("cpu")
    device(type='cpu')
    >>> check_device("gpu")
    Traceback (most recent call last):
    ...
    bertrt.errors.DeviceError: --device 'gpu': expected auto, cpu, cuda or cuda:N
    >>> check_devices("cuda:0, cuda:1")
    ('cuda:0', 'cuda:1')
    >>> resolve_devices("cpu,cpu")
    [device(type='cpu'), device(type='cpu')]
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


def check_devices(devices: object, *, flag: str = "--devices") -> tuple[str, ...]:
    """A comma-separated list of devices (or a sequence), normalised; ``("all",)`` for 'all'. No torch import.

    Entries are 'cpu', 'cuda' or 'cuda:N'. CPU entries may repeat (two CPU "devices" share the host's
    cores: a testing aid for the multi-device paths, not a way to run faster); a list is all CPU or
    all CUDA.

    Raises:
        DeviceError: an empty or malformed entry, 'auto' or 'all' inside a list, CPU mixed with
            CUDA, or a CUDA device named twice ('cuda' is 'cuda:0' here only once resolved).
    """
    entries = [e.strip().lower() for e in devices.split(",")] if isinstance(devices, str) else (
        [check_device(e, flag=flag) for e in devices] if isinstance(devices, (list, tuple)) else None)
    if not entries or entries == [""]:
        raise DeviceError(f"{flag} {devices!r}: expected all, or a comma-separated list of cpu, cuda or cuda:N")
    if entries == ["all"]:
        return ("all",)
    for entry in entries:
        match = _DEVICE.match(entry)
        if entry == "all" or match is None or match.group(1) == "auto" or (
                match.group(2) is not None and match.group(1) != "cuda"):
            raise DeviceError(f"{flag} {devices!r}: expected all alone, or a comma-separated list of cpu, cuda or "
                              f"cuda:N (got {entry!r} in the list)")
    kinds = {entry.split(":")[0] for entry in entries}
    if len(kinds) > 1:
        raise DeviceError(f"{flag} {devices!r}: mixes CPU and CUDA devices; list only GPUs, or only cpu to test")
    cuda = [e for e in entries if e.startswith("cuda")]
    for entry in cuda:
        if cuda.count(entry) > 1:
            raise DeviceError(f"{flag} {devices!r}: {entry} is listed twice; each GPU runs one engine")
    return tuple(entries)


def resolve_devices(devices: object, *, flag: str = "--devices") -> list:
    """``torch.device`` s for ``check_devices(devices)``: 'all' -> every visible CUDA device.

    Raises:
        DeviceError: as ``check_devices``; CUDA asked for without a GPU (or 'all' without one);
            an index beyond the GPUs present; one GPU named twice ('cuda' and 'cuda:0').
    """
    import torch

    entries = check_devices(devices, flag=flag)
    if entries == ("all",):
        if not torch.cuda.is_available():
            raise DeviceError(f"{flag} all: no CUDA GPU is visible here (to test on a CPU, list CPU devices: "
                              f"{flag} cpu,cpu)")
        return [torch.device("cuda", i) for i in range(torch.cuda.device_count())]
    if entries[0] != "cpu" and not torch.cuda.is_available():
        raise DeviceError(f"{flag} {','.join(entries)}: no CUDA GPU is available here (to test on a CPU, list CPU "
                          f"devices: {flag} cpu,cpu)")
    resolved = [resolve_device(entry, flag=flag) for entry in entries]
    if resolved[0].type == "cuda":
        indexed = [torch.device("cuda", torch.cuda.current_device() if d.index is None else d.index) for d in resolved]
        for entry, device in zip(entries, indexed):
            if indexed.count(device) > 1:
                raise DeviceError(f"{flag} {','.join(entries)}: {entry} is {device}, listed twice; "
                                  "each GPU runs one engine")
        resolved = indexed
    return resolved
