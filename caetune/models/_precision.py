"""Which float format a run trains in: ``fp32``, ``bf16`` or ``auto``.

``bf16`` runs the forward pass and the loss under ``torch.autocast`` in
bfloat16; the master weights, their gradients and the fused Adam step stay in
float32. It pays only where the device multiplies bf16 natively; elsewhere
(a CPU without AMX or AVX512-BF16) oneDNN emulates it and it is slower than
float32.

``auto`` resolves per device and per use:

* the device must run bf16 matmuls natively (:func:`bf16_native`): a CUDA
  device for which ``torch.cuda.is_bf16_supported()`` holds, or a CPU whose
  instruction set torch reports with AMX tiles
  (``torch.cpu._is_amx_tile_supported()``) or AVX512-BF16
  (``torch.cpu._is_avx512_bf16_supported()``), the two paths oneDNN uses for
  bf16 matmuls and convolutions;
* and the use must be one where bf16 was shown to be safe
  (:data:`AUTO_BF16_USES`). bf16 ranked configs as float32 did, but was not
  shown to keep a run's validation MSE and utilisation within float32's
  seed spread, so it is kept to the search's screening trials, whose job is
  to rank configs; the runs whose numbers are the product (confirmation
  seeds, ``caetune train``) stay in float32. ``benchmarks/bf16_parity.py``
  holds the measurement and README.md the figures.

The resolved precision is what a run records (metrics, checkpoints, exported
configs), so retraining reproduces it.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

import torch

from caetune._errors import InputError

PRECISIONS = ("auto", "fp32", "bf16")
# What a run is for; ``auto`` may resolve differently for each.
SCREENING = "screening"  # a search's trials: they rank configs
CONFIRMATION = "confirmation"  # the seeds that confirm a search's best configs
TRAIN = "train"  # caetune train, and any Trainer not told otherwise
USES = (SCREENING, CONFIRMATION, TRAIN)
# The uses for which ``auto`` takes bf16 on a device that has it natively.
AUTO_BF16_USES = frozenset({SCREENING})


def bf16_native(device: torch.device) -> bool:
    """Whether ``device`` runs bf16 matmuls in hardware (not emulated in float32)."""
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported(including_emulation=False))
    if device.type == "cpu":
        # torch asks cpuinfo for these; a hypervisor that hides the flags makes them False.
        return bool(torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported())
    return False


def resolve_precision(precision: str, device: torch.device, *, use: str = TRAIN) -> str:
    """``fp32`` or ``bf16``: the precision a run of this use trains in on ``device``.

    Args:
        precision: ``fp32``, ``bf16`` or ``auto`` (a config's field).
        device: The training device.
        use: One of :data:`USES`.

    Raises:
        InputError: An unknown precision or use.
    """
    if precision not in PRECISIONS:
        raise InputError("precision", f"expected one of {', '.join(PRECISIONS)}, got {precision!r}")
    if use not in USES:
        raise InputError("use", f"expected one of {', '.join(USES)}, got {use!r}")
    if precision != "auto":
        return precision
    return "bf16" if use in AUTO_BF16_USES and bf16_native(device) else "fp32"


def autocast(precision: str, device: torch.device) -> AbstractContextManager:
    """The forward pass's context: bf16 autocast on ``device``, or nothing for fp32."""
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return nullcontext()
