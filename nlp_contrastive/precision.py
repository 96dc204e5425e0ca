"""Which precision to train and encode in: bf16 only where the hardware computes it natively.

bf16 autocast is ~2x faster than fp32 on a GPU with bf16 support or a CPU with AVX512-BF16 / AMX, but on
other CPUs PyTorch emulates it and it is ~20x *slower* (measured: stsb-cosine 0.97 vs 22.85 pairs/s on an
AVX2 EPYC). So `bf16: auto` (the default) asks the hardware.

The CPU test reads the instruction-set flags (Linux /proc/cpuinfo: `avx512_bf16`, `amx_bf16`; aarch64: `bf16`).
`torch.ops.mkldnn._is_mkldnn_bf16_supported()` is not used as the answer: it is true on any AVX512BW/VL/DQ
CPU, where oneDNN runs bf16 by converting to fp32 (correct, but slower than fp32), and
`torch.backends.cpu.get_cpu_capability()` reports "AVX512" for both kinds of CPU.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import time
import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")  # x86 AVX512-BF16, x86 AMX, aarch64 BF16 (Features line)
AUTO = "auto"


@dataclass(frozen=True)
class PrecisionChoice:
    """The resolved `bf16` setting and why, as printed with the recipe and kept in the run record."""

    bf16: bool
    requested: Any  # what the recipe said: "auto", True or False
    device: str  # "cuda" or "cpu"
    native_bf16: bool
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _cpuinfo_values(keys: tuple[str, ...], path: str) -> list[str] | None:
    """The values of every `key: value` line of a cpuinfo file whose key is one of `keys`; None if unreadable."""
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    values = []
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip().lower() in keys:
            values.append(value.strip())
    return values


def read_cpu_flags(path: str = "/proc/cpuinfo") -> set[str] | None:
    """The CPU's instruction-set flags (x86 `flags`, aarch64 `Features`); None where they cannot be read."""
    values = _cpuinfo_values(("flags", "features"), path)
    return None if values is None else {flag for value in values for flag in value.split()}


def read_cpu_model(path: str = "/proc/cpuinfo") -> str | None:
    """The CPU's model name (x86 `model name`), for saying which machine a measurement came from."""
    return next(iter(_cpuinfo_values(("model name",), path) or []), None)


def cpu_bf16_support() -> tuple[bool, str]:
    """(native bf16 on this CPU?, the evidence), from the CPU flags."""
    flags = read_cpu_flags()
    if flags is None:
        return False, "CPU flags unreadable (no /proc/cpuinfo), so native bf16 cannot be confirmed"
    found = [f for f in CPU_BF16_FLAGS if f in flags]
    if found:
        return True, f"CPU has {'/'.join(found)}"
    simd = "AVX512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "no AVX2/AVX512"
    return False, f"CPU ({simd}) has no avx512_bf16/amx_bf16: bf16 would be emulated, ~20x slower than fp32"


def cuda_bf16_support() -> tuple[bool, str] | None:
    """(native bf16 on the GPU?, the evidence), or None without a CUDA device."""
    import torch

    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name(0)
    if torch.cuda.is_bf16_supported(including_emulation=False):
        return True, f"GPU {name} supports bf16"
    return False, f"GPU {name} has no native bf16"


def resolve_bf16(requested: Any, *, use_cpu: bool = False, fp16: bool = False) -> PrecisionChoice:
    """Turn the recipe's `bf16` (auto/true/false) into a bool for TrainingArguments, with the reason."""
    if isinstance(requested, str) and requested.lower() == AUTO:
        requested = AUTO
    elif not isinstance(requested, bool):
        raise ValueError(f"recipe key 'bf16' must be true, false or auto, got {requested!r}")
    gpu = None if use_cpu else cuda_bf16_support()
    device = "cpu" if gpu is None else "cuda"
    native, evidence = cpu_bf16_support() if gpu is None else gpu
    if requested is AUTO:
        if fp16:
            return PrecisionChoice(False, AUTO, device, native, "fp16 is set, so bf16 stays off")
        return PrecisionChoice(native, AUTO, device, native,
                               f"auto: {evidence}" + ("" if native else "; training in fp32"))
    if requested and not native:
        return PrecisionChoice(True, True, device, False, f"bf16: true was asked for although {evidence}")
    return PrecisionChoice(requested, requested, device, native, f"bf16: {str(requested).lower()} as set ({evidence})")


def warn_if_emulated(choice: PrecisionChoice) -> None:
    """`bf16: true` without native support still runs; say once what it costs, measured on this machine."""
    if choice.bf16 and not choice.native_bf16 and choice.device == "cpu":
        _warn_emulated_once()


@functools.cache
def _warn_emulated_once() -> None:
    slowdown = measure_cpu_bf16_slowdown()
    warnings.warn(f"bf16: true on a CPU without native bf16: autocast is emulated, measured {slowdown:.1f}x slower "
                  "than fp32 for one transformer-sized matmul here (a whole stsb-cosine training step: 23.6x "
                  "slower on an AVX2 CPU); set bf16: auto (or false) to train in fp32",
                  RuntimeWarning, stacklevel=3)


def measure_cpu_bf16_slowdown(size: int = 384, rows: int = 512, repeats: int = 5) -> float:
    """Time of a [rows, size] x [size, 4*size] linear layer under CPU bf16 autocast / in fp32 (best of repeats)."""
    import torch

    layer = torch.nn.Linear(size, 4 * size)
    x = torch.randn(rows, size)

    def best(bf16: bool) -> float:
        times = []
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            layer(x)  # warm-up
            for _ in range(repeats):
                start = time.perf_counter()
                layer(x)
                times.append(time.perf_counter() - start)
        return min(times)

    return best(True) / max(best(False), 1e-9)


def encode_autocast(device: Any, bf16: bool | None = None):
    """The autocast context for inference on `device`: bf16 where native (None = auto), else a no-op."""
    import torch

    device_type = torch.device(device).type
    if bf16 is None:
        support = cuda_bf16_support() if device_type == "cuda" else cpu_bf16_support()
        bf16 = bool(support and support[0])
    if device_type not in ("cpu", "cuda"):
        bf16 = False
    return torch.autocast(device_type, dtype=torch.bfloat16, enabled=bf16)


@contextlib.contextmanager
def fp32_evaluation(encoder: Any) -> Iterator[Any]:
    """Run the enclosed evaluation in fp32 even after bf16/fp16 training.

    Under mixed precision accelerate replaces the model's `forward` by an autocast wrapper (and keeps the original
    as `_original_forward`); it is set aside here, and autocast is off, so the numbers written during and at the
    end of training are those `nlp-contrastive eval` gives on the saved model, on every CPU class.
    """
    import torch

    patched, original = encoder.__dict__.get("forward"), encoder.__dict__.get("_original_forward")
    if patched is not None and original is not None:
        encoder.forward = original
    try:
        with torch.autocast(encoder.device.type, enabled=False):
            yield encoder
    finally:
        if patched is not None and original is not None:
            encoder.forward = patched
