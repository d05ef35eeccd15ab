"""f32 <-> bf16 / f16 conversions, bit for bit against torch."""

import numpy as np
import pytest
import torch

import qkv
from conftest import bits16, from_torch, to_torch

TORCH16 = {"bf16": torch.bfloat16, "f16": torch.float16}


def special_f32() -> np.ndarray:
    """Values where rounding is delicate: ties, subnormals, overflow, signed zeros."""
    f = np.float32
    values = [0.0, -0.0, 1.0, -1.0, np.inf, -np.inf, 65504.0, 65505.0, 65519.99, 65520.0, 1e30, -1e30,
              np.finfo(f).max, -np.finfo(f).max, np.finfo(f).tiny, np.finfo(f).smallest_subnormal,
              -np.finfo(f).smallest_subnormal, 1e-40, 6e-8, 5.96e-8, 2.98e-8, 3e-8, 6.1e-5, 6.09e-5,
              1e-45, 3.14159265, 1 / 3]
    # Exact ties and near-ties for bf16 (8-bit mantissa) and f16 (11-bit), both parities.
    for m in (1.0, 1.5, 3.0, 1.0 + 2**-7, 1.0 + 2**-10):
        for k in (8, 9, 11, 12):
            values += [m + 2.0**-k, m - 2.0**-k, -(m + 2.0**-k)]
    ties = np.array(values, dtype=np.float64).astype(np.float32)
    # Patterns straddling every bf16 rounding boundary: low 16 bits 0x7fff, 0x8000, 0x8001.
    hi = np.arange(0, 0x7F80, 0x1F3, dtype=np.uint32) << 16
    near = np.concatenate([hi | 0x7FFF, hi | 0x8000, hi | 0x8001, (hi + 0x10000) | 0x8000])
    near = np.concatenate([near, near | 0x80000000]).view(np.float32)
    # f16 ties: f32 values with exactly half an f16 ulp below the f16 grid (normal and subnormal).
    h = np.arange(0, 0x7C00, 0x3B, dtype=np.uint16).view(np.float16).astype(np.float32)
    half_ulp = np.abs(np.spacing(h.astype(np.float16)).astype(np.float32)) / 2
    return np.concatenate([ties, near, h + half_ulp, h - half_ulp, -(h + half_ulp)]).astype(np.float32)


def random_f32(n: int = 200_000) -> np.ndarray:
    """Random bit patterns over every exponent (NaNs excluded here)."""
    rng = np.random.default_rng(5)
    bits = rng.integers(0, 2**32, size=n, dtype=np.uint64).astype(np.uint32)
    x = bits.view(np.float32)
    return x[~np.isnan(x)]


@pytest.mark.parametrize("name", ["bf16", "f16"])
@pytest.mark.parametrize("values", [special_f32, random_f32], ids=["special", "random"])
def test_f32_to_16_bits_match_torch(name, values):
    x = values()
    with np.errstate(over="ignore"):
        want = bits16(torch.from_numpy(x).to(TORCH16[name]))
    got = bits16(to_torch(qkv.from_numpy(x).to(name)))
    mismatch = np.nonzero(got != want)[0]
    assert mismatch.size == 0, (
        f"{mismatch.size} mismatches, e.g. {[(float(x[i]), hex(got[i]), hex(want[i])) for i in mismatch[:5]]}"
    )


@pytest.mark.parametrize("name", ["bf16", "f16"])
def test_nan_stays_nan(name):
    nans = np.array([0x7FC00000, 0xFFC00000, 0x7F800001, 0x7FBFFFFF, 0xFF812345], dtype=np.uint32)
    x = nans.view(np.float32)
    out = to_torch(qkv.from_numpy(x).to(name)).to(torch.float32).numpy()
    assert np.isnan(out).all()
    if name == "bf16":
        # dtype.h: NaN stays a quiet NaN with its sign kept.
        assert (np.signbit(out) == np.signbit(x)).all()


@pytest.mark.parametrize("name", ["bf16", "f16"])
def test_16_to_f32_exact_for_every_pattern(name):
    patterns = torch.arange(0, 2**16, dtype=torch.int32).to(torch.int16)
    x = patterns.view(TORCH16[name])
    want = x.to(torch.float32)
    got = to_torch(from_torch(x).to("f32"))
    w, g = want.numpy(), got.numpy()
    nan = np.isnan(w)
    assert (np.isnan(g) == nan).all()
    np.testing.assert_array_equal(g[~nan].view(np.uint32), w[~nan].view(np.uint32))


def test_bf16_f16_cross_conversion_goes_through_f32():
    x = torch.randn(10_000) * 100
    b = x.to(torch.bfloat16)
    got = bits16(to_torch(from_torch(b).to("f16")))
    want = bits16(b.to(torch.float32).to(torch.float16))
    np.testing.assert_array_equal(got, want)


def test_integer_conversions():
    x = np.array([-3.7, -0.5, 0.0, 0.5, 2.9, 1e6], dtype=np.float32)
    t = qkv.from_numpy(x)
    # float -> int truncates toward zero, as C++ and torch do.
    np.testing.assert_array_equal(t.to("i32").numpy(), torch.from_numpy(x).to(torch.int32).numpy())
    np.testing.assert_array_equal(t.to("i64").numpy(), torch.from_numpy(x).to(torch.int64).numpy())
    np.testing.assert_array_equal(t.to("bool").numpy(), x != 0)
    i = np.array([-(2**24) - 1, 2**24 + 1, 7], dtype=np.int64)
    np.testing.assert_array_equal(qkv.from_numpy(i).to("f32").numpy(), i.astype(np.float32))
