"""Device resolution and the mixed-precision / memory-format choices that follow from it.

Kept free of side effects so the CUDA decisions can be tested on a machine without a GPU.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` -> CUDA if available, else MPS, else CPU; explicit names are checked."""
    name = str(name or "auto")
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise ValueError(f"unknown device {name!r}: {exc}") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {name!r} asked for, but CUDA is not available here")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(
                f"device {name!r} asked for, but only {torch.cuda.device_count()} CUDA device(s) exist"
            )
    elif device.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise ValueError("device 'mps' asked for, but MPS is not available here")
    elif device.type != "cpu":
        raise ValueError(f"unsupported device {name!r}; use auto, cpu, cuda, cuda:N or mps")
    return device


@dataclass(frozen=True)
class Precision:
    """What the train/embed step does on a device: autocast dtype and memory format."""

    device_type: str
    autocast_dtype: torch.dtype | None
    channels_last: bool

    def autocast(self):
        """An autocast context (a no-op one when mixed precision is off)."""
        if self.autocast_dtype is None:
            return torch.autocast(device_type=self.device_type, enabled=False)
        return torch.autocast(device_type=self.device_type, dtype=self.autocast_dtype)

    def prepare_input(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x


def choose_precision(device: torch.device, amp: str = "auto",
                     channels_last: bool | str = "auto", *, inference: bool = False) -> Precision:
    """bf16 autocast by default on CUDA only (it slows CPUs down); channels_last by default on
    CUDA, and on the CPU for ``inference`` (oneDNN's convolutions: embedding with
    reconstruction 1.5-1.8x faster at 64x64, docs/model.md; in training it did not pay
    reliably)."""
    if amp not in ("auto", "bf16", "off"):
        raise ValueError(f"unknown amp mode {amp!r}; use auto, bf16 or off")
    is_cuda = device.type == "cuda"
    use_bf16 = amp == "bf16" or (amp == "auto" and is_cuda)
    if channels_last == "auto":
        channels_last = is_cuda or (inference and device.type == "cpu")
    return Precision(device_type=device.type,
                     autocast_dtype=torch.bfloat16 if use_bf16 else None,
                     channels_last=bool(channels_last))


def release_device_memory(model: torch.nn.Module | None, device: torch.device | str,
                          keep_on_device: bool = False) -> None:
    """Give an accelerator's memory back when a run or an embedding ends (or is stopped).

    The model moves to the CPU unless ``keep_on_device`` (a model kept for browsing), and
    the caching allocator returns its free blocks, so other programs (or the next run) see
    the memory free. A no-op on the CPU, apart from nothing to move.
    """
    device = torch.device(device)
    if device.type == "cpu":
        return
    if model is not None and not keep_on_device:
        model.to("cpu")
    if device.type == "cuda":
        torch.cuda.empty_cache()
    elif device.type == "mps":
        torch.mps.empty_cache()


def device_memory(device: torch.device | str) -> tuple[int, int] | None:
    """(bytes held by tensors, bytes reserved by the allocator) on a CUDA device; None
    elsewhere (CPU memory is the operating system's to report)."""
    device = torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available():
        return None
    return int(torch.cuda.memory_allocated(device)), int(torch.cuda.memory_reserved(device))
