"""Device, mixed precision and seeding for one trial.

The same loop runs on a 2-CPU CI box and on cluster GPUs, so everything device-specific is
decided here once: the device (``train.device = "auto"`` picks CUDA when present, the GPU Ray
Train assigned inside a worker), the autocast dtype (bf16 where the GPU supports it, else fp16
with a ``GradScaler``; off on CPU, where autocast buys nothing for these models and would make
CPU results differ from the float32 reference), and ``channels_last`` / cuDNN benchmark.
"""

from __future__ import annotations

import contextlib
import random
from typing import Any

import numpy as np

from lungray.errors import ConfigError


def select_device(name: str = "auto"):
    """``torch.device`` for ``train.device`` (auto, cpu, cuda, cuda:N)."""
    import torch

    if name == "auto":
        if torch.cuda.is_available():
            try:  # inside a Ray Train worker: the GPU Ray assigned to this rank
                import ray.train.torch as rtt

                return rtt.get_device()
            except Exception:
                return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"train.device '{name}' asks for CUDA but no GPU is visible; use train.device=auto or cpu")
    return dev


def amp_dtype(device: Any, mode: str = "auto"):
    """The autocast dtype (``torch.bfloat16``/``torch.float16``) or None for full precision.

    ``auto``: bf16 on GPUs that support it (no loss scaling needed), fp16 on older GPUs, off on
    CPU. ``bf16``/``fp16`` force a dtype on CUDA and are ignored (off) on CPU; ``off`` is off.
    """
    import torch

    if mode not in ("auto", "bf16", "fp16", "off"):
        raise ConfigError(f"train.amp '{mode}' is not valid; valid choices: auto, bf16, fp16, off")
    if mode == "off" or getattr(device, "type", str(device)) != "cuda":
        return None
    if mode == "bf16" or (mode == "auto" and torch.cuda.is_bf16_supported()):
        return torch.bfloat16
    return torch.float16


def autocast(device: Any, dtype: Any):
    """An autocast context for ``dtype`` on ``device`` (a null context when dtype is None)."""
    if dtype is None:
        return contextlib.nullcontext()
    import torch

    return torch.autocast(device_type=device.type, dtype=dtype)


def make_scaler(device: Any, dtype: Any):
    """A ``GradScaler`` that is enabled only for fp16 (bf16 has fp32's exponent range)."""
    import torch

    enabled = dtype is not None and dtype == torch.float16
    return torch.amp.GradScaler(device.type if enabled else "cpu", enabled=enabled)


def configure_backends(device: Any, deterministic: bool) -> dict[str, Any]:
    """Set cuDNN benchmark/determinism for this trial; returns the previous values to restore.

    ``benchmark`` picks the fastest convolution algorithms for the fixed input size (the
    studies' 224-256 px inputs) unless ``train.deterministic`` asks for bitwise-repeatable GPU
    runs, which also turns on ``torch.use_deterministic_algorithms`` (warn-only).
    """
    import torch

    prev = {
        "benchmark": torch.backends.cudnn.benchmark,
        "cudnn_deterministic": torch.backends.cudnn.deterministic,
        "algorithms": torch.are_deterministic_algorithms_enabled(),
    }
    if getattr(device, "type", "cpu") == "cuda":
        torch.backends.cudnn.benchmark = not deterministic
        torch.backends.cudnn.deterministic = deterministic
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    return prev


def restore_backends(prev: dict[str, Any]) -> None:
    import torch

    torch.backends.cudnn.benchmark = prev["benchmark"]
    torch.backends.cudnn.deterministic = prev["cudnn_deterministic"]
    torch.use_deterministic_algorithms(prev["algorithms"], warn_only=True)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy's legacy global RNG and torch (CPU and every GPU) for one trial.

    Called by :func:`lungray.train.run_trial` itself (never at import), so code that still draws
    from global RNGs (weight init, dropout, third-party transforms) is reproducible per trial.
    """
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds every CUDA device


def epoch_seed(seed: int, epoch: int, stream: int = 0) -> int:
    """A 63-bit seed derived from (trial seed, epoch, stream) for per-epoch generators.

    Deriving the data order from (seed, epoch) instead of carrying a generator forward is what
    lets a resumed trial replay epoch k exactly without saving sampler state.
    """
    ss = np.random.SeedSequence([int(seed) % 2**63, int(epoch), int(stream)])
    return int(ss.generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))


def torch_generator(seed: int, epoch: int, stream: int = 0):
    import torch

    g = torch.Generator()
    g.manual_seed(epoch_seed(seed, epoch, stream))
    return g


def distributed_info() -> tuple[int, int]:
    """(rank, world_size) of torch.distributed, or (0, 1) when it is not initialised."""
    try:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            return dist.get_rank(), dist.get_world_size()
    except Exception:  # pragma: no cover - torch built without distributed
        pass
    return 0, 1


def to_channels_last(x: Any, enabled: bool) -> Any:
    """Move a 4-D tensor or a module to channels_last memory format when enabled."""
    if not enabled:
        return x
    import torch

    if isinstance(x, torch.nn.Module):
        return x.to(memory_format=torch.channels_last)
    if getattr(x, "ndim", 0) == 4:
        return x.contiguous(memory_format=torch.channels_last)
    return x
