"""The backward ops of qkv/ops.h against torch autograd, with float64 torch as the reference.

Every gradient is compared on the same rounded inputs: the reference is torch's
backward in float64, torch's own error is that of its backward in the input
dtype, and qkv's error may be at most FACTOR x torch's plus a floor of a few
f32 epsilons (conftest.assert_matches_reference; qkv's gradients are f32 for
every input dtype, so the floor is f32's).
"""

import pytest
import torch
import torch.nn.functional as F

import qkv
from conftest import FLOAT_DTYPES, TORCH_DTYPE, assert_matches_reference, from_torch, random_input, to_torch

ROWS = [1, 7, 33]
FEATURES = [1, 5, 64, 385, 1000]


def q(x):
    return None if x is None else from_torch(x)


def check_grad(out, theirs, ref, what, **kwargs):
    assert out.dtype == "f32", f"{what}: gradient dtype {out.dtype}"
    assert_matches_reference(out, theirs, ref, "f32", what=what, **kwargs)


def autograd(fn, inputs, grad):
    """Gradients of sum(fn(*inputs) * grad) w.r.t. every non-None input, with
    inputs and grad as given (their dtype): torch's backward in that dtype."""
    leaves = [None if x is None else x.detach().clone().requires_grad_(True) for x in inputs]
    fn(*leaves).backward(grad)
    return [None if x is None else x.grad for x in leaves]


def reference_and_theirs(fn, inputs, grad):
    ref = autograd(fn, [None if x is None else x.double() for x in inputs], grad.double())
    theirs = autograd(fn, inputs, grad)
    return ref, theirs


# ---- element-wise -----------------------------------------------------------------

ELEMENTWISE = {
    "relu": (lambda g, x: qkv.relu_backward(g, x), torch.relu),
    "silu": (lambda g, x: qkv.silu_backward(g, x), F.silu),
    "gelu": (lambda g, x: qkv.gelu_backward(g, x), F.gelu),
    "gelu_tanh": (lambda g, x: qkv.gelu_backward(g, x, approximate="tanh"),
                  lambda x: F.gelu(x, approximate="tanh")),
}


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("shape", [(1,), (7, 5), (33, 385), (2, 1000), (0, 3)], ids=str)
@pytest.mark.parametrize("op", list(ELEMENTWISE))
def test_elementwise_backward(op, shape, dtype):
    ours, fn = ELEMENTWISE[op]
    x = random_input(shape, dtype, seed=1)
    g = random_input(shape, dtype, seed=2, scale=1.0)
    (ref,), (theirs,) = reference_and_theirs(fn, [x], g)
    check_grad(ours(q(g), q(x)), theirs, ref, f"{op}_backward")


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("op", list(ELEMENTWISE))
def test_elementwise_backward_special_values(op, dtype):
    big = {"f32": 1e30, "bf16": 1e30, "f16": 6e4}[dtype]
    values = [0.0, -0.0, 1e-6, -1e-6, 0.5, -0.75, -1.28, 5.0, -5.0, 12.0, -12.0, 21.0, -21.0, 88.0, -104.0,
              big, -big, float("nan")]
    x = torch.tensor(values, dtype=torch.float64).to(TORCH_DTYPE[dtype])
    g = torch.linspace(-2, 2, len(values), dtype=torch.float64).to(TORCH_DTYPE[dtype])
    ours, fn = ELEMENTWISE[op]
    (ref,), (theirs,) = reference_and_theirs(fn, [x], g)
    check_grad(ours(q(g), q(x)), theirs, ref, f"{op}_backward")


def test_relu_forward():
    for dtype in FLOAT_DTYPES:
        x = random_input((9, 17), dtype, seed=3)
        x[0, :3] = torch.tensor([float("nan"), float("inf"), float("-inf")])
        out = qkv.relu(from_torch(x))
        assert out.dtype == dtype
        got, want = to_torch(out), torch.relu(x)
        assert torch.equal(got.isnan(), want.isnan())
        assert torch.equal(got[~want.isnan()], want[~want.isnan()])


# ---- softmax / log_softmax --------------------------------------------------------------

SOFTMAX = {
    "softmax": (qkv.softmax_backward, torch.softmax, torch.ops.aten._softmax_backward_data),
    "log_softmax": (qkv.log_softmax_backward, torch.log_softmax, torch.ops.aten._log_softmax_backward_data),
}


def check_softmax(op, x, g, dim, what):
    """y is the forward's output in x's dtype; the reference is torch's backward
    formula in float64 on that same y (and g)."""
    ours, forward, backward = SOFTMAX[op]
    y = forward(x, dim)
    ref = backward(g.double(), y.double(), dim, torch.float64)
    theirs = backward(g, y, dim, x.dtype)
    check_grad(ours(q(g), q(y), dim), theirs, ref, what)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("features", FEATURES)
@pytest.mark.parametrize("rows", ROWS)
@pytest.mark.parametrize("op", list(SOFTMAX))
def test_softmax_backward(op, rows, features, dtype):
    x = random_input((rows, features), dtype, seed=4)
    g = random_input((rows, features), dtype, seed=5, scale=1.0)
    check_softmax(op, x, g, -1, f"{op}_backward")


@pytest.mark.parametrize("dim", [0, 1, -2, 2])
@pytest.mark.parametrize("op", list(SOFTMAX))
def test_softmax_backward_other_dims(op, dim):
    x = random_input((6, 7, 9), "f32", seed=6)
    g = random_input((6, 7, 9), "f32", seed=7, scale=1.0)
    check_softmax(op, x, g, dim, f"{op}_backward dim={dim}")


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("op", list(SOFTMAX))
def test_softmax_backward_huge_logits(op, dtype):
    big = {"f32": 3e38, "bf16": 3e38, "f16": 6e4}[dtype]
    x = torch.tensor([[big, big / 2, 0.0, -big], [-big, -big, -big, -big / 2], [1e4, 1e4 + 1, 1e4 - 1, 1e4]],
                     dtype=torch.float64).to(TORCH_DTYPE[dtype])
    g = torch.tensor([[1.0, -2.0, 0.5, 3.0], [0.25, -1.0, 2.0, 1.0], [-1.5, 1.0, 0.0, 2.0]],
                     dtype=torch.float64).to(TORCH_DTYPE[dtype])
    check_softmax(op, x, g, -1, f"{op}_backward huge")


def test_softmax_backward_chain_matches_autograd():
    # The composition with the forward is torch's autograd of softmax from x.
    x = random_input((5, 37), "f32", seed=8)
    g = random_input((5, 37), "f32", seed=9, scale=1.0)
    for op in SOFTMAX:
        ours, forward, _ = SOFTMAX[op]
        y = getattr(qkv, op)(from_torch(x))
        (ref,), (theirs,) = reference_and_theirs(lambda v: forward(v, -1), [x], g)
        check_grad(ours(q(g), y), theirs, ref, f"{op} chain", factor=4.0)


# ---- normalisation ---------------------------------------------------------------------


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("features", FEATURES)
@pytest.mark.parametrize("rows", ROWS)
@pytest.mark.parametrize("affine", ["none", "weight", "both"])
def test_layer_norm_backward(affine, rows, features, dtype):
    x = random_input((rows, features), dtype, seed=10)
    g = random_input((rows, features), dtype, seed=11, scale=1.0)
    w = random_input((features,), dtype, seed=12, scale=1.0) if affine != "none" else None
    b = random_input((features,), dtype, seed=13, scale=1.0) if affine == "both" else None
    ref, theirs = reference_and_theirs(lambda v, wt, bs: F.layer_norm(v, (features,), wt, bs, 1e-5), [x, w, b], g)
    dx, dw, db = qkv.layer_norm_backward(q(g), q(x), q(w), q(b), 1e-5)
    check_grad(dx, theirs[0], ref[0], "layer_norm_backward dx")
    for name, ours, r, t in (("dweight", dw, ref[1], theirs[1]), ("dbias", db, ref[2], theirs[2])):
        if r is None:
            assert ours is None, f"{name} given for a norm without it"
        else:
            check_grad(ours, t, r, f"layer_norm_backward {name}")


def test_layer_norm_backward_large_mean_and_3d():
    x = (torch.randn(4, 6, 512, generator=torch.Generator().manual_seed(14), dtype=torch.float64) * 0.1 + 1e3).float()
    g = random_input((4, 6, 512), "f32", seed=15, scale=1.0)
    w = random_input((512,), "f32", seed=16, scale=1.0)
    b = random_input((512,), "f32", seed=17, scale=1.0)
    ref, theirs = reference_and_theirs(lambda v, wt, bs: F.layer_norm(v, (512,), wt, bs), [x, w, b], g)
    dx, dw, db = qkv.layer_norm_backward(q(g), q(x), q(w), q(b))
    for name, ours, r, t in zip(("dx", "dw", "db"), (dx, dw, db), ref, theirs):
        check_grad(ours, t, r, f"layer_norm_backward large mean {name}")


def test_layer_norm_backward_eps():
    x = random_input((3, 16), "f32", seed=18)
    x[1] = 2.0  # a constant row: rstd = 1 / sqrt(eps)
    g = random_input((3, 16), "f32", seed=19, scale=1.0)
    for eps in (1e-5, 1e-2, 1.0):
        (ref,), (theirs,) = reference_and_theirs(lambda v: F.layer_norm(v, (16,), eps=eps), [x], g)
        dx, dw, db = qkv.layer_norm_backward(q(g), q(x), eps=eps)
        assert dw is None and db is None
        check_grad(dx, theirs, ref, f"layer_norm_backward eps={eps}")


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("features", FEATURES)
@pytest.mark.parametrize("rows", ROWS)
@pytest.mark.parametrize("weighted", [False, True])
def test_rms_norm_backward(weighted, rows, features, dtype):
    x = random_input((rows, features), dtype, seed=20)
    g = random_input((rows, features), dtype, seed=21, scale=1.0)
    w = random_input((features,), dtype, seed=22, scale=1.0) if weighted else None
    eps = torch.finfo(torch.float32).eps
    ref, theirs = reference_and_theirs(lambda v, wt: F.rms_norm(v, (features,), wt, eps), [x, w], g)
    dx, dw = qkv.rms_norm_backward(q(g), q(x), q(w))
    check_grad(dx, theirs[0], ref[0], "rms_norm_backward dx")
    if weighted:
        check_grad(dw, theirs[1], ref[1], "rms_norm_backward dweight")
    else:
        assert dw is None


def test_norm_backward_errors():
    x = qkv.zeros([3, 4])
    with pytest.raises(qkv.QkvError, match="layer_norm_backward.*weight.*\\[5\\]"):
        qkv.layer_norm_backward(x, x, qkv.zeros([5]))
    with pytest.raises(qkv.QkvError, match="rms_norm_backward.*grad.*\\[3, 5\\]"):
        qkv.rms_norm_backward(qkv.zeros([3, 5]), x)
    with pytest.raises(qkv.QkvError, match="eps"):
        qkv.layer_norm_backward(x, x, eps=-1.0)


# ---- broadcasting: sum_to_shape, sub, div -------------------------------------------------

SUM_TO_SHAPE = [
    ((4, 3, 5), (5,)),
    ((4, 3, 5), (3, 1)),
    ((4, 3, 5), (4, 1, 5)),
    ((4, 3, 5), (1, 3, 1)),
    ((4, 3, 5), ()),
    ((7, 33, 64), (64,)),
    ((33, 1000), (33, 1)),
    ((2, 3, 4, 5), (3, 1, 5)),
    ((6, 1, 7), (1, 7)),
    ((6,), (6,)),
    ((0, 5), (5,)),
    ((5, 0), (5, 1)),
    ((4097, 3), (3,)),
]


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("grad_shape, shape", SUM_TO_SHAPE, ids=str)
def test_sum_to_shape(grad_shape, shape, dtype):
    g = random_input(grad_shape, dtype, seed=23)
    out = qkv.sum_to_shape(from_torch(g), list(shape))
    check_grad(out, g.sum_to_size(shape) if shape else g.sum(), g.double().sum_to_size(shape) if shape else g.double().sum(),
               "sum_to_shape")


def test_sum_to_shape_errors():
    g = qkv.zeros([4, 3, 5])
    for bad in ([2, 5], [1, 4, 3, 5], [4, 3, 6]):
        with pytest.raises(qkv.QkvError, match="sum_to_shape.*\\[4, 3, 5\\]"):
            qkv.sum_to_shape(g, bad)


BROADCAST = [((3, 5), (3, 5)), ((3, 5), (5,)), ((5,), (3, 5)), ((4, 1, 6), (3, 1)), ((1,), (7,)), ((7,), (1,)),
             ((2, 0), (1,)), ((), (2, 3)), ((33, 385), (33, 1))]


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("shape_a, shape_b", BROADCAST, ids=str)
@pytest.mark.parametrize("op", ["sub", "div"])
def test_sub_div_broadcast(op, shape_a, shape_b, dtype):
    a = random_input(shape_a, dtype, seed=24)
    b = random_input(shape_b, dtype, seed=25)
    fn = getattr(torch, op)
    out = getattr(qkv, op)(from_torch(a), from_torch(b))
    assert_matches_reference(out, fn(a, b), fn(a.double(), b.double()), dtype, what=op)
    if dtype == "f32" and 0 not in shape_a + shape_b:  # a correctly rounded op: exact
        assert torch.equal(to_torch(out), fn(a, b))


def test_sub_div_backward_through_sum_to_shape():
    # What autograd does for a - b and a / b with b broadcast.
    a = random_input((6, 4, 9), "f32", seed=26)
    b = random_input((4, 1), "f32", seed=27)
    g = random_input((6, 4, 9), "f32", seed=28, scale=1.0)
    ref, theirs = reference_and_theirs(torch.sub, [a, b], g)
    db = qkv.sum_to_shape(qkv.scale(from_torch(g), -1.0), [4, 1])
    check_grad(db, theirs[1], ref[1], "sub backward b")
    ref, theirs = reference_and_theirs(torch.div, [a, b], g)
    da = qkv.sum_to_shape(qkv.div(from_torch(g), from_torch(b)), [6, 4, 9])
    check_grad(da, theirs[0], ref[0], "div backward a")


# ---- dropout --------------------------------------------------------------------------------


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_dropout_mask_statistics_and_scale(p):
    x = random_input((1000, 1000), "f32", seed=29)
    out, mask = qkv.dropout(from_torch(x), p, seed=7)
    out, mask = to_torch(out), to_torch(mask)
    assert mask.dtype == torch.bool and mask.shape == x.shape
    n = mask.numel()
    keep = 1 - p
    rate = mask.double().mean().item()
    assert abs(rate - keep) <= 4 * (keep * p / n) ** 0.5, f"keep rate {rate} for p={p}"
    # Neighbours are independent: P(both kept) = keep^2.
    pair = (mask[:, 1:] & mask[:, :-1]).double().mean().item()
    assert abs(pair - keep**2) <= 4 * (keep**2 * (1 - keep**2) / mask[:, 1:].numel()) ** 0.5
    scale = torch.tensor(1 / (1 - p), dtype=torch.float32)
    assert torch.equal(out, torch.where(mask, x * scale, torch.zeros(())))


def test_dropout_determinism_and_dtype():
    x = random_input((33, 385), "f32", seed=30)
    o1, m1 = qkv.dropout(from_torch(x), 0.3, seed=11)
    o2, m2 = qkv.dropout(from_torch(x), 0.3, seed=11)
    o3, m3 = qkv.dropout(from_torch(x), 0.3, seed=12)
    assert torch.equal(to_torch(m1), to_torch(m2)) and torch.equal(to_torch(o1), to_torch(o2))
    assert not torch.equal(to_torch(m1), to_torch(m3))
    one = qkv.num_threads()
    qkv.set_num_threads(1)
    o4, m4 = qkv.dropout(from_torch(x), 0.3, seed=11)
    qkv.set_num_threads(one)
    assert torch.equal(to_torch(m1), to_torch(m4)) and torch.equal(to_torch(o1), to_torch(o4))
    xb = x.to(torch.bfloat16)
    ob, mb = qkv.dropout(from_torch(xb), 0.3, seed=11)
    assert ob.dtype == "bf16" and torch.equal(to_torch(mb), to_torch(m1))
    out, mask = qkv.dropout(from_torch(x), 0.0, seed=11)
    assert mask is None and torch.equal(to_torch(out), x)


def test_dropout_backward():
    p = 0.25
    x = random_input((7, 1000), "f32", seed=31)
    g = random_input((7, 1000), "bf16", seed=32, scale=1.0)
    _, mask = qkv.dropout(from_torch(x), p, seed=5)
    got = to_torch(qkv.dropout_backward(from_torch(g), mask, p))
    want = g.double() * to_torch(mask).double() / (1 - p)
    assert got.dtype == torch.float32
    assert torch.allclose(got.double(), want, rtol=2**-23, atol=0)
    assert torch.equal(to_torch(qkv.dropout_backward(from_torch(g), None, 0.0)), g.float())


def test_dropout_errors():
    x = qkv.zeros([4])
    for p in (1.0, -0.1, 1.5, float("nan")):
        with pytest.raises(qkv.QkvError, match="dropout: p"):
            qkv.dropout(x, p, seed=0)
    with pytest.raises(qkv.QkvError, match="dropout_backward.*mask"):
        qkv.dropout_backward(x, None, 0.5)
    with pytest.raises(qkv.QkvError, match="dropout_backward.*mask.*bool"):
        qkv.dropout_backward(x, x, 0.5)
