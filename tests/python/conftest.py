"""Shared helpers for the pytest suite: qkv against PyTorch with fp64 references.

The rule every numerical test follows: compute the op in fp64 with torch on the
same (already rounded) input values; qkv's error against that reference may be
at most FACTOR x the error of torch's own op in the same dtype, plus a floor of
a few units of the dtype's epsilon times the output's magnitude (so that an
op torch happens to get exactly right does not demand exactness from qkv).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import qkv

TORCH_DTYPE = {"f32": torch.float32, "bf16": torch.bfloat16, "f16": torch.float16}
NUMPY_DTYPE = {"f32": np.float32, "f16": np.float16, "i32": np.int32, "i64": np.int64, "bool": np.bool_}

# Unit roundoff of each storage dtype (half the distance from 1 to the next value).
EPSILON = {"f32": 2.0**-24, "bf16": 2.0**-8, "f16": 2.0**-11}

# qkv may be at most this many times less accurate than torch in the same dtype...
FACTOR = 2.0
# ...plus this many units of EPSILON[dtype] x the reference's largest magnitude.
FLOOR_ULPS = {"f32": 8.0, "bf16": 2.0, "f16": 2.0}

FLOAT_DTYPES = ["f32", "bf16", "f16"]


def to_torch(t: qkv.Tensor) -> torch.Tensor:
    """The qkv tensor as a torch tensor over the same memory (DLPack)."""
    return torch.from_dlpack(t)


def from_torch(x: torch.Tensor) -> qkv.Tensor:
    """A qkv tensor over the torch tensor's memory (DLPack; bf16 included)."""
    return qkv.from_numpy(x.detach())


def random_input(shape, dtype: str, seed: int = 0, scale: float = 3.0) -> torch.Tensor:
    """N(0, scale^2) values, rounded to `dtype` (a torch tensor of that dtype)."""
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=g, dtype=torch.float64) * scale).to(TORCH_DTYPE[dtype])


def _max_abs(x: torch.Tensor) -> float:
    return float(x.abs().max()) if x.numel() else 0.0


def assert_matches_reference(
    out: qkv.Tensor,
    torch_out: torch.Tensor,
    ref64: torch.Tensor,
    dtype: str,
    *,
    factor: float = FACTOR,
    floor_ulps: float | None = None,
    scale: float | None = None,
    what: str = "",
):
    """qkv's `out` is within factor x torch's error (+ floor) of the fp64 reference.

    Non-finite reference values (inf, -inf, NaN) must be matched exactly by qkv.
    `torch_out` is torch's result in the same dtype as qkv's input; `scale` is
    the magnitude the floor is relative to (default: the reference's max |value|).
    """
    got = to_torch(out).to(torch.float64)
    ref = ref64.to(torch.float64)
    theirs = torch_out.to(torch.float64)
    assert tuple(got.shape) == tuple(ref.shape), f"{what}: shape {tuple(got.shape)} != {tuple(ref.shape)}"
    assert out.dtype == dtype or what.startswith("matmul"), f"{what}: dtype {out.dtype} != {dtype}"

    # Where the reference overflows the output dtype (e.g. exp(12) in f16) the
    # exact answer is the rounded one: inf.
    out_dtype = TORCH_DTYPE.get(out.dtype, torch.float32)
    rounded = ref.to(out_dtype).to(torch.float64)
    finite = torch.isfinite(rounded)
    nonfinite_ok = torch.where(torch.isnan(rounded), torch.isnan(got), got == rounded)
    bad = (~finite) & (~nonfinite_ok)
    assert not bad.any(), (
        f"{what}: non-finite reference values not matched at {bad.nonzero()[:5].tolist()}: "
        f"got {got[bad][:5].tolist()}, want {rounded[bad][:5].tolist()}"
    )
    if not finite.any():
        return
    assert torch.isfinite(got[finite]).all(), f"{what}: qkv gave non-finite values where the reference is finite"
    err_qkv = _max_abs(got[finite] - ref[finite])
    err_torch = _max_abs(theirs[finite] - ref[finite]) if torch.isfinite(theirs[finite]).all() else 0.0
    if scale is None:
        scale = max(_max_abs(ref[finite]), 1e-30)
    ulps = FLOOR_ULPS[dtype] if floor_ulps is None else floor_ulps
    bound = factor * err_torch + ulps * EPSILON[dtype] * scale
    assert err_qkv <= bound, (
        f"{what} [{dtype}]: qkv error {err_qkv:.3e} > bound {bound:.3e} "
        f"(torch error {err_torch:.3e}, scale {scale:.3e})"
    )


def bits16(x: torch.Tensor) -> np.ndarray:
    """The raw 16-bit patterns of a bf16 / f16 torch tensor."""
    return x.contiguous().view(torch.int16).numpy().view(np.uint16)


@pytest.fixture(autouse=True)
def _restore_threads():
    """Tests that change the thread count leave it as they found it."""
    before = qkv.num_threads()
    yield
    qkv.set_num_threads(before)


def f32(t: torch.Tensor) -> qkv.Tensor:
    """A contiguous qkv f32 tensor holding a torch tensor's values rounded to f32."""
    return qkv.from_dlpack(t.detach().float().contiguous())


def f64(x: qkv.Tensor) -> torch.Tensor:
    """A qkv tensor's values as a float64 torch tensor."""
    return torch.from_dlpack(x).double()


def assert_close_scaled(got: torch.Tensor, want: torch.Tensor, what: str, rel: float = 2e-5):
    """|got - want| <= rel * max(max |want|, 1): f32 kernels against a float64
    reference on O(1) inputs, where a vanishing reference is held to that scale."""
    scale = max(float(want.abs().max()), 1.0) if want.numel() else 1.0
    err = float((got - want).abs().max()) if want.numel() else 0.0
    assert err <= rel * scale, f"{what}: max error {err:.3e} > {rel:.1e} x {scale:.3e}"
