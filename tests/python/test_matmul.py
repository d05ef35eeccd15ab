"""qkv.matmul (oneDNN) against torch, with fp64 torch as the reference."""

import pytest
import torch

import qkv
from conftest import assert_matches_reference, from_torch, random_input, to_torch


def reference(a: torch.Tensor, b: torch.Tensor, ta: bool, tb: bool):
    """(fp64 product, torch's f32 product) of the operands as qkv sees them."""
    a64, b64 = a.double(), b.double()
    if ta:
        a64 = a64.transpose(-2, -1)
    if tb:
        b64 = b64.transpose(-2, -1)
    return a64 @ b64, (a64.float() @ b64.float())


def check(a: torch.Tensor, b: torch.Tensor, ta=False, tb=False, what="matmul"):
    out = qkv.matmul(from_torch(a), from_torch(b), transpose_a=ta, transpose_b=tb)
    assert out.dtype == "f32" and out.is_contiguous()
    ref, theirs = reference(a, b, ta, tb)
    # Accumulation error grows with K and with the magnitude of the terms,
    # |a| @ |b|: the floor is a few f32 epsilons of that, times sqrt(K).
    k = a.shape[-2] if ta else a.shape[-1]
    mag = (a.double().abs().transpose(-2, -1) if ta else a.double().abs())
    mag = mag @ (b.double().abs().transpose(-2, -1) if tb else b.double().abs())
    scale = float(mag.max()) * max(k, 1) ** 0.5 if mag.numel() else 1.0
    assert_matches_reference(out, theirs, ref, "f32", scale=scale, floor_ulps=4, what=what)
    return out


@pytest.mark.parametrize("dtype", ["f32", "bf16"])
@pytest.mark.parametrize(
    "m, k, n", [(1, 1, 1), (3, 5, 7), (64, 64, 64), (17, 130, 33), (1, 512, 1000), (128, 1, 9)], ids=str
)
@pytest.mark.parametrize("ta, tb", [(False, False), (False, True), (True, False), (True, True)])
def test_matmul_2d(m, k, n, ta, tb, dtype):
    a = random_input((k, m) if ta else (m, k), dtype, seed=1, scale=1.0)
    b = random_input((n, k) if tb else (k, n), dtype, seed=2, scale=1.0)
    check(a, b, ta, tb, what=f"matmul {dtype}")


@pytest.mark.parametrize("dtype", ["f32", "bf16"])
@pytest.mark.parametrize(
    "shape_a, shape_b",
    [((2, 3, 4, 5), (2, 3, 5, 6)), ((2, 1, 4, 5), (1, 3, 5, 6)), ((4, 5), (7, 5, 2)), ((3, 4, 5), (5, 2))],
    ids=str,
)
def test_matmul_batch_broadcast(shape_a, shape_b, dtype):
    a = random_input(shape_a, dtype, seed=3, scale=1.0)
    b = random_input(shape_b, dtype, seed=4, scale=1.0)
    out = check(a, b, what="matmul broadcast")
    assert out.shape == tuple(torch.matmul(a.float(), b.float()).shape)


def test_matmul_non_contiguous_operands():
    base = random_input((2, 16, 3, 24), "f32", seed=5, scale=1.0)
    q = base.permute(0, 2, 1, 3)  # [2, 3, 16, 24] attention-style head view
    k = random_input((2, 24, 3, 16), "f32", seed=6, scale=1.0).permute(0, 2, 3, 1)  # [2, 3, 16, 24]
    assert not q.is_contiguous() and not k.is_contiguous()
    check(q, k, tb=True, what="matmul q k^T")
    sliced = random_input((40, 50), "f32", seed=7)[::2, 5:35]
    check(sliced, random_input((30, 8), "f32", seed=8), what="matmul sliced")
    expanded = random_input((1, 6, 4), "f32", seed=9).expand(3, 6, 4)
    check(expanded, random_input((3, 4, 5), "f32", seed=10), what="matmul expanded")


def test_matmul_empty_dims():
    out = qkv.matmul(qkv.zeros([0, 4]), qkv.zeros([4, 3]))
    assert out.shape == (0, 3)
    out = qkv.matmul(qkv.ones([2, 0]), qkv.ones([0, 3]))
    assert out.shape == (2, 3) and to_torch(out).eq(0).all()


def test_matmul_operator_and_torch_inputs():
    a = torch.randn(4, 6)
    b = torch.randn(6, 2)
    torch.testing.assert_close(to_torch(from_torch(a) @ from_torch(b)), a @ b, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(to_torch(qkv.matmul(a, b)), a @ b, rtol=1e-5, atol=1e-5)


def test_matmul_primitive_cache():
    a, b = qkv.randn([7, 11], seed=1), qkv.randn([11, 13], seed=2)
    qkv.matmul(a, b)
    before = qkv.matmul_primitive_count()
    for _ in range(3):
        qkv.matmul(a, b)
    assert qkv.matmul_primitive_count() == before  # same shapes: cached
    qkv.matmul(a, qkv.randn([11, 14], seed=3))
    assert qkv.matmul_primitive_count() == before + 1


@pytest.mark.parametrize("threads", [1, 2])
def test_matmul_threads(threads):
    qkv.set_num_threads(threads)
    check(random_input((96, 200), "f32", seed=11, scale=1.0), random_input((200, 80), "f32", seed=12, scale=1.0))


def test_matmul_errors():
    with pytest.raises(qkv.QkvError, match=r"matmul.*5.*6|matmul.*6.*5"):
        qkv.matmul(qkv.zeros([3, 5]), qkv.zeros([6, 2]))
    with pytest.raises(qkv.QkvError, match="matmul"):
        qkv.matmul(qkv.zeros([3, 5]), qkv.zeros([5, 2], "bf16"))
    with pytest.raises(qkv.QkvError, match="matmul"):
        qkv.matmul(qkv.zeros([5]), qkv.zeros([5, 2]))
    with pytest.raises(qkv.QkvError, match="matmul"):
        qkv.matmul(qkv.zeros([2, 3, 5]), qkv.zeros([4, 5, 2]))
