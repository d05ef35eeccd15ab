"""Every op of qkv/ops.h against torch, with fp64 torch as the reference.

qkv's error may be at most ~2x the error of torch's own op in the same dtype,
plus a floor of a few dtype epsilons (conftest.assert_matches_reference).
"""

import threading

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import qkv
from conftest import FLOAT_DTYPES, TORCH_DTYPE, assert_matches_reference, from_torch, random_input, to_torch

SHAPES = [(1,), (7,), (3, 5), (2, 3, 17), (4, 1), (0, 5), (5, 0), (33, 129), (2, 1000)]


def check(qkv_fn, torch_fn, x: torch.Tensor, dtype: str, what: str, **kwargs):
    out = qkv_fn(from_torch(x))
    ref = torch_fn(x.to(torch.float64))
    theirs = torch_fn(x)
    assert_matches_reference(out, theirs, ref, dtype, what=what, **kwargs)
    return out


# ---- element-wise -----------------------------------------------------------------

UNARY = {
    "exp": (qkv.exp, torch.exp),
    "silu": (qkv.silu, F.silu),
    "gelu": (qkv.gelu, F.gelu),
    "gelu_tanh": (lambda x: qkv.gelu(x, approximate="tanh"), lambda x: F.gelu(x, approximate="tanh")),
}


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("op", list(UNARY))
def test_unary(op, shape, dtype):
    qkv_fn, torch_fn = UNARY[op]
    check(qkv_fn, torch_fn, random_input(shape, dtype, seed=1), dtype, op)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("op", list(UNARY))
def test_unary_special_values(op, dtype):
    big = {"f32": 1e30, "bf16": 1e30, "f16": 6e4}[dtype]
    values = [0.0, -0.0, 1e-6, -1e-6, 5.0, -5.0, 20.0, -20.0, 88.0, 89.0, -104.0, big, -big,
              float("inf"), float("-inf"), float("nan")]
    x = torch.tensor(values, dtype=torch.float64).to(TORCH_DTYPE[dtype])
    check(*UNARY[op], x, dtype, op)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize(
    "shape_a, shape_b",
    [((3, 5), (3, 5)), ((3, 5), (5,)), ((4, 1, 6), (3, 1)), ((1,), (7,)), ((2, 0), (1,)), ((), (2, 3))],
    ids=str,
)
def test_add_mul_broadcast(shape_a, shape_b, dtype):
    a = random_input(shape_a, dtype, seed=2)
    b = random_input(shape_b, dtype, seed=3)
    for q, t in ((qkv.add, torch.add), (qkv.mul, torch.mul)):
        out = q(from_torch(a), from_torch(b))
        assert_matches_reference(out, t(a, b), t(a.double(), b.double()), dtype, what=q.__name__)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_scale(dtype):
    x = random_input((5, 9), dtype, seed=4)
    check(lambda t: qkv.scale(t, 0.125), lambda t: t * 0.125, x, dtype, "scale")
    check(lambda t: qkv.scale(t, -3.3), lambda t: t * -3.3, x, dtype, "scale")


def test_operators():
    a, b = qkv.tensor([1.0, 2.0]), qkv.tensor([10.0, 20.0])
    assert (a + b).tolist() == [11.0, 22.0]
    assert (a * b).tolist() == [10.0, 40.0]
    assert (a * 2).tolist() == [2.0, 4.0]
    assert (2.0 * a).tolist() == [2.0, 4.0]
    assert (a + 1).tolist() == [2.0, 3.0]


# ---- softmax / log_softmax ----------------------------------------------------------

SOFTMAX = {"softmax": (qkv.softmax, torch.softmax), "log_softmax": (qkv.log_softmax, torch.log_softmax)}


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("op", list(SOFTMAX))
def test_softmax_last_dim(op, shape, dtype):
    q, t = SOFTMAX[op]
    check(lambda x: q(x, -1), lambda x: t(x, -1), random_input(shape, dtype, seed=5), dtype, op)


@pytest.mark.parametrize("dim", [0, 1, -2])
@pytest.mark.parametrize("op", list(SOFTMAX))
def test_softmax_other_dims(op, dim):
    q, t = SOFTMAX[op]
    x = random_input((6, 7, 9), "f32", seed=6)
    check(lambda v: q(v, dim), lambda v: t(v, dim), x, "f32", f"{op} dim={dim}")


@pytest.mark.parametrize("op", list(SOFTMAX))
def test_softmax_non_contiguous_input(op):
    q, t = SOFTMAX[op]
    x = random_input((40, 30), "f32", seed=7).T  # a transposed view, not copied
    assert not x.is_contiguous()
    check(lambda v: q(v, -1), lambda v: t(v, -1), x, "f32", op)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("op", list(SOFTMAX))
def test_softmax_huge_logits(op, dtype):
    big = {"f32": 3e38, "bf16": 3e38, "f16": 6e4}[dtype]
    x = torch.tensor([[big, big / 2, 0.0, -big], [-big, -big, -big, -big / 2], [1e4, 1e4 + 1, 1e4 - 1, 1e4]],
                     dtype=torch.float64).to(TORCH_DTYPE[dtype])
    q, t = SOFTMAX[op]
    check(lambda v: q(v, -1), lambda v: t(v, -1), x, dtype, op)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("op", list(SOFTMAX))
def test_softmax_some_minus_inf(op, dtype):
    q, t = SOFTMAX[op]
    x = random_input((4, 19), dtype, seed=8)
    x[:, ::3] = float("-inf")  # a masked attention row
    check(lambda v: q(v, -1), lambda v: t(v, -1), x, dtype, op)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_softmax_all_minus_inf_row(dtype):
    x = random_input((3, 21), dtype, seed=9)
    x[1] = float("-inf")
    # torch gives NaN for a fully masked row; qkv documents zeros (softmax) and
    # -inf (log_softmax), so a fully masked attention row contributes nothing.
    assert torch.isnan(torch.softmax(x, -1)[1]).all()
    s = to_torch(qkv.softmax(from_torch(x), -1)).float()
    assert (s[1] == 0).all()
    ls = to_torch(qkv.log_softmax(from_torch(x), -1)).float()
    assert (ls[1] == float("-inf")).all()
    keep = torch.tensor([0, 2])
    assert_matches_reference(qkv.softmax(from_torch(x[keep]), -1), torch.softmax(x[keep], -1),
                             torch.softmax(x[keep].double(), -1), dtype, what="softmax")


def test_softmax_nan_propagates():
    x = torch.tensor([[1.0, float("nan"), 2.0], [1.0, 2.0, 3.0]])
    s = to_torch(qkv.softmax(from_torch(x)))
    assert torch.isnan(s[0]).all() and not torch.isnan(s[1]).any()


# ---- normalisation --------------------------------------------------------------------


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("shape", [(1,), (3, 1), (4, 7), (2, 3, 64), (5, 1000), (0, 8)], ids=str)
@pytest.mark.parametrize("affine", ["none", "weight", "both"])
def test_layer_norm(shape, dtype, affine):
    x = random_input(shape, dtype, seed=10)
    n = shape[-1]
    w = random_input((n,), dtype, seed=11) if affine != "none" else None
    b = random_input((n,), dtype, seed=12) if affine == "both" else None

    def ours(v):
        return qkv.layer_norm(v, None if w is None else from_torch(w), None if b is None else from_torch(b), 1e-5)

    def theirs(v):
        cast = (lambda p: None if p is None else p.to(v.dtype))
        return F.layer_norm(v, (n,), cast(w), cast(b), 1e-5)

    check(ours, theirs, x, dtype, f"layer_norm[{affine}]")


@pytest.mark.parametrize("dtype", ["f32"])
def test_layer_norm_large_mean(dtype):
    # Mean 1e4, spread 1: the naive E[x^2] - E[x]^2 loses every digit here.
    x = (torch.randn(8, 512, generator=torch.Generator().manual_seed(13), dtype=torch.float64) + 1e4).float()
    check(lambda v: qkv.layer_norm(v), lambda v: F.layer_norm(v, (512,)), x, dtype, "layer_norm")


def test_layer_norm_eps_and_constant_rows():
    x = torch.full((2, 16), 3.0)
    x[1, 0] = 3.5
    for eps in (1e-5, 1e-2, 1.0):
        check(lambda v: qkv.layer_norm(v, eps=eps), lambda v: F.layer_norm(v, (16,), eps=eps), x, "f32",
              f"layer_norm eps={eps}")


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("shape", [(1,), (3, 1), (4, 7), (2, 3, 64), (5, 1000), (0, 8)], ids=str)
@pytest.mark.parametrize("weighted", [False, True])
def test_rms_norm(shape, dtype, weighted):
    x = random_input(shape, dtype, seed=14)
    n = shape[-1]
    w = random_input((n,), dtype, seed=15) if weighted else None
    ours = lambda v: qkv.rms_norm(v, None if w is None else from_torch(w))  # noqa: E731
    theirs = lambda v: F.rms_norm(v, (n,), None if w is None else w.to(v.dtype))  # noqa: E731
    check(ours, theirs, x, dtype, "rms_norm")


def test_rms_norm_eps():
    x = torch.full((2, 8), 1e-4)
    for eps in (1e-6, 1e-2):
        check(lambda v: qkv.rms_norm(v, eps=eps), lambda v: F.rms_norm(v, (8,), eps=eps), x, "f32", "rms_norm")
    # The default eps is f32 machine epsilon, as in torch.
    check(lambda v: qkv.rms_norm(v), lambda v: F.rms_norm(v, (8,)), x, "f32", "rms_norm default eps")


# ---- reductions ---------------------------------------------------------------------

REDUCE = {"sum": (qkv.sum, torch.sum), "mean": (qkv.mean, torch.mean), "max": (qkv.max, torch.amax)}


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("keepdim", [False, True])
@pytest.mark.parametrize("dim", [0, 1, -1])
@pytest.mark.parametrize("op", list(REDUCE))
def test_reduce_dim(op, dim, keepdim, dtype):
    q, t = REDUCE[op]
    x = random_input((13, 1000 if dim != 0 else 7, 3)[: 2 if dim != 1 else 3], dtype, seed=16)
    scale = None
    if op == "sum":  # a sum's rounding error scales with the sum of |x|, not with the result
        scale = float(x.double().abs().sum(dim).max())
    check(lambda v: q(v, dim, keepdim), lambda v: t(v, dim, keepdim=keepdim), x, dtype,
          f"{op} dim={dim} keepdim={keepdim}", scale=scale)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("op", list(REDUCE))
def test_reduce_all(op, dtype):
    q, t = REDUCE[op]
    x = random_input((37, 29), dtype, seed=17)
    scale = float(x.double().abs().sum()) if op == "sum" else None
    out = check(q, t, x, dtype, op, scale=scale)
    assert out.shape == ()
    kept = q(from_torch(x), keepdim=True)
    assert kept.shape == (1, 1)
    assert kept.to("f32").item() == out.to("f32").item()


def test_reduce_empty_and_errors():
    e = torch.zeros(3, 0)
    assert qkv.sum(from_torch(e), 1).tolist() == [0.0, 0.0, 0.0]
    assert all(np.isnan(v) for v in qkv.mean(from_torch(e), 1).tolist())  # as torch.mean
    with pytest.raises(qkv.QkvError, match="max"):
        qkv.max(from_torch(e), 1)
    x = torch.tensor([[1.0, float("nan"), 0.0], [1.0, 2.0, 3.0]])
    m = qkv.max(from_torch(x), 1).tolist()
    assert np.isnan(m[0]) and m[1] == 3.0  # NaN propagates, as in torch.amax


def test_sum_mean_long_rows():
    # 10^6 elements of mean 1: naive f32 accumulation would be off by ~1e-2 relative.
    x = (torch.rand(1, 1_000_000, generator=torch.Generator().manual_seed(18), dtype=torch.float64) + 0.5).float()
    for q, t in ((qkv.sum, torch.sum), (qkv.mean, torch.mean)):
        scale = float(x.double().abs().sum()) if q is qkv.sum else 1.0
        check(lambda v: q(v, -1), lambda v: t(v, -1), x, "f32", q.__name__, scale=scale)
        check(q, t, x, "f32", q.__name__, scale=scale)


# ---- plumbing: foreign inputs, threads, errors ------------------------------------------


def test_ops_accept_numpy_and_torch():
    a = np.linspace(-2, 2, 12, dtype=np.float32).reshape(3, 4)
    s = qkv.softmax(a)
    np.testing.assert_allclose(s.numpy(), torch.softmax(torch.from_numpy(a), -1).numpy(), rtol=1e-6, atol=1e-7)
    s2 = qkv.gelu(torch.from_numpy(a), approximate="tanh")
    np.testing.assert_allclose(s2.numpy(), F.gelu(torch.from_numpy(a), approximate="tanh").numpy(), rtol=1e-6,
                               atol=1e-7)
    ln = qkv.layer_norm(a, np.ones(4, np.float32), np.zeros(4, np.float32))
    np.testing.assert_allclose(ln.numpy(), F.layer_norm(torch.from_numpy(a), (4,)).numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("op", ["softmax", "layer_norm", "gelu", "sum"])
def test_thread_counts_agree(op):
    x = random_input((64, 777), "f32", seed=19)
    fn = {"softmax": qkv.softmax, "layer_norm": qkv.layer_norm, "gelu": qkv.gelu, "sum": lambda v: qkv.sum(v, -1)}[op]
    outs = []
    for n in (1, 2):
        qkv.set_num_threads(n)
        outs.append(to_torch(fn(from_torch(x))).clone())
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-6, atol=1e-6)


def test_ops_run_from_python_threads():
    # The GIL is released inside ops; concurrent calls must still be correct.
    x = random_input((200, 300), "f32", seed=20)
    want = torch.softmax(x, -1)
    results, errors = [], []

    def work():
        try:
            for _ in range(20):
                results.append(to_torch(qkv.softmax(from_torch(x))))
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=work) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(results) == 60
    for r in results:
        torch.testing.assert_close(r, want, rtol=2e-6, atol=1e-7)


def test_errors_name_the_op_and_values():
    x = qkv.zeros([2, 3])
    with pytest.raises(qkv.QkvError, match=r"softmax.*dim 2"):
        qkv.softmax(x, 2)
    with pytest.raises(qkv.QkvError, match=r"add.*\[2, 3\].*\[4\]"):
        qkv.add(x, qkv.zeros([4]))
    with pytest.raises(qkv.QkvError, match="layer_norm"):
        qkv.layer_norm(x, qkv.ones([4]))
    with pytest.raises(qkv.QkvError, match="rms_norm"):
        qkv.rms_norm(x, qkv.ones([2]))
    with pytest.raises(qkv.QkvError, match="approximate"):
        qkv.gelu(x, approximate="fast")
    with pytest.raises(qkv.QkvError, match="exp"):
        qkv.exp(qkv.zeros([2], "i32"))
