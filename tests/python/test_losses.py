"""The losses of qkv/losses.h against torch.nn.functional, forward and backward.

References are torch in float64 on the same (already rounded) inputs; gradients
come from torch autograd. qkv computes in f32 with double sums, so its error is
held to a few f32 epsilons of the reference's magnitude (conftest's floor).
"""

import math

import pytest
import torch
import torch.nn.functional as F

import qkv
from conftest import assert_matches_reference, from_torch, random_input, to_torch

REDUCTIONS = ["mean", "sum", "none"]

# torch warns that kl_div's reduction "mean" will change meaning; qkv's is torch's of today.
pytestmark = pytest.mark.filterwarnings("ignore:reduction. 'mean' divides:UserWarning")


def targets_for(shape, classes, seed, ignore_index=-100, ignore_every=0, dtype=torch.int64):
    g = torch.Generator().manual_seed(seed)
    t = torch.randint(0, classes, shape, generator=g)
    if ignore_every:
        flat = t.view(-1)
        flat[::ignore_every] = ignore_index
    return t.to(dtype)


def upstream(loss: torch.Tensor, seed: int) -> torch.Tensor:
    """A random upstream gradient of the loss's shape (f32 values, held in f64)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(loss.shape, generator=g, dtype=torch.float64).float().double()


def check_loss_and_grad(qkv_loss, qkv_backward, torch_loss, x: torch.Tensor, dtype: str, what: str, **torch_inputs):
    """qkv's loss (f32) and d loss / d x (x's dtype) against torch in f64."""
    xd = x.detach().double().requires_grad_()
    ref = torch_loss(xd, **torch_inputs)
    out = qkv_loss(from_torch(x))
    assert out.dtype == "f32", what
    assert_matches_reference(out, ref.detach(), ref.detach(), "f32", what=what)
    g = upstream(ref, seed=99)
    ref.backward(g)
    grad = qkv_backward(from_torch(g.float()), from_torch(x))
    theirs = xd.grad if dtype == "f32" else xd.grad.to(x.dtype)
    assert_matches_reference(grad, theirs, xd.grad, dtype, what=what + " grad")
    # A float upstream gradient means the same as a one-element tensor.
    if ref.dim() == 0:
        again = qkv_backward(float(g), from_torch(x))
        assert torch.equal(to_torch(again), to_torch(grad)), what


# ---- cross-entropy ---------------------------------------------------------------------


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("smoothing", [0.0, 0.1, 1.0])
@pytest.mark.parametrize("shape", [(6, 5), (4, 7, 3), (2, 3, 4, 5), (9,)], ids=str)
@pytest.mark.parametrize("ignore_every", [0, 3])
def test_cross_entropy(shape, smoothing, reduction, ignore_every):
    x = random_input(shape, "f32", seed=1)
    t_shape = () if len(shape) == 1 else (shape[0],) + shape[2:]
    t = targets_for(t_shape, shape[0] if len(shape) == 1 else shape[1], seed=2, ignore_every=ignore_every)
    kw = dict(label_smoothing=smoothing, reduction=reduction)
    check_loss_and_grad(
        lambda q: qkv.cross_entropy(q, from_torch(t), **kw),
        lambda g, q: qkv.cross_entropy_backward(g, q, from_torch(t), **kw),
        lambda xd: F.cross_entropy(xd, t, **kw),
        x, "f32", f"cross_entropy {shape} {kw} ignore_every={ignore_every}",
    )


@pytest.mark.parametrize("dtype", ["bf16", "f16"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_cross_entropy_low_precision_logits(dtype, reduction):
    # Loss in f32 from the exact bf16 / f16 values; gradient in the logits' dtype.
    x = random_input((8, 11, 2), dtype, seed=3)
    t = targets_for((8, 2), 11, seed=4, ignore_every=5, dtype=torch.int32)
    kw = dict(label_smoothing=0.05, reduction=reduction)
    check_loss_and_grad(
        lambda q: qkv.cross_entropy(q, from_torch(t), **kw),
        lambda g, q: qkv.cross_entropy_backward(g, q, from_torch(t), **kw),
        lambda xd: F.cross_entropy(xd, t.long(), **kw),
        x, dtype, f"cross_entropy {dtype} {reduction}",
    )


def test_cross_entropy_custom_ignore_index_and_large_logits():
    x = random_input((5, 6), "f32", seed=5, scale=200.0)  # softmax far from uniform: needs max-subtraction
    t = torch.tensor([0, 3, 7, 5, 7])  # 7 is ignored (it is no class)
    kw = dict(ignore_index=7, label_smoothing=0.2)
    check_loss_and_grad(
        lambda q: qkv.cross_entropy(q, from_torch(t), **kw),
        lambda g, q: qkv.cross_entropy_backward(g, q, from_torch(t), **kw),
        lambda xd: F.cross_entropy(xd, t, **kw),
        x, "f32", "cross_entropy ignore_index=7",
    )


@pytest.mark.parametrize("smoothing", [0.0, 0.3])
def test_cross_entropy_all_ignored(smoothing):
    x = random_input((4, 3), "f32", seed=6)
    t = torch.full((4,), -100)
    for reduction in REDUCTIONS:
        ref = F.cross_entropy(x.double(), t, label_smoothing=smoothing, reduction=reduction)
        out = to_torch(qkv.cross_entropy(from_torch(x), from_torch(t), label_smoothing=smoothing, reduction=reduction))
        assert torch.allclose(out.double(), ref, equal_nan=True), (reduction, out, ref)
    assert math.isnan(qkv.cross_entropy(from_torch(x), from_torch(t)).item())
    xd = x.double().requires_grad_()
    F.cross_entropy(xd, t, label_smoothing=smoothing).backward()
    grad = to_torch(qkv.cross_entropy_backward(1.0, from_torch(x), from_torch(t), label_smoothing=smoothing))
    assert torch.equal(grad.double(), xd.grad)  # zeros, as torch
    assert not grad.any()


def test_cross_entropy_errors():
    x = from_torch(random_input((3, 4), "f32", seed=7))
    with pytest.raises(qkv.QkvError, match=r"target 4 .*C = 4"):
        qkv.cross_entropy(x, qkv.tensor([0, 4, 1]))
    with pytest.raises(qkv.QkvError, match=r"target -3 .*C = 4"):
        qkv.cross_entropy(x, qkv.tensor([0, -3, 1]))
    with pytest.raises(qkv.QkvError, match=r"shape \[2\].*\[3, 4\].*\[3\]"):
        qkv.cross_entropy(x, qkv.tensor([0, 1]))
    with pytest.raises(qkv.QkvError, match="i64 or i32"):
        qkv.cross_entropy(x, qkv.tensor([0.0, 1.0, 2.0]))
    with pytest.raises(qkv.QkvError, match="label_smoothing"):
        qkv.cross_entropy(x, qkv.tensor([0, 1, 2]), label_smoothing=1.5)
    with pytest.raises(qkv.QkvError, match="reduction"):
        qkv.cross_entropy(x, qkv.tensor([0, 1, 2]), reduction="avg")
    with pytest.raises(qkv.QkvError, match="grad_output has shape"):
        qkv.cross_entropy_backward(qkv.zeros([2]), x, qkv.tensor([0, 1, 2]), reduction="none")


# ---- mse ---------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["f32", "bf16"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("shape", [(7,), (3, 5, 2), ()], ids=str)
def test_mse_loss(shape, reduction, dtype):
    x = random_input(shape, dtype, seed=8)
    y = random_input(shape, dtype, seed=9)
    check_loss_and_grad(
        lambda q: qkv.mse_loss(q, from_torch(y), reduction=reduction),
        lambda g, q: qkv.mse_loss_backward(g, q, from_torch(y), reduction=reduction),
        lambda xd: F.mse_loss(xd, y.double(), reduction=reduction),
        x, dtype, f"mse_loss {shape} {reduction}",
    )


def test_mse_loss_shape_mismatch():
    with pytest.raises(qkv.QkvError, match=r"\[2, 3\].*\[3, 2\]"):
        qkv.mse_loss(qkv.zeros([2, 3]), qkv.zeros([3, 2]))


# ---- KL divergence -----------------------------------------------------------------------


@pytest.mark.parametrize("log_target", [False, True])
@pytest.mark.parametrize("reduction", REDUCTIONS + ["batchmean"])
def test_kl_div(reduction, log_target):
    x = torch.log_softmax(random_input((6, 9), "f32", seed=10), -1)
    p = torch.softmax(random_input((6, 9), "f32", seed=11), -1)
    p[0, :3] = 0.0  # zero target probabilities contribute 0 (xlogy)
    target = torch.log(p) if log_target else p
    kw = dict(reduction=reduction, log_target=log_target)
    check_loss_and_grad(
        lambda q: qkv.kl_div(q, from_torch(target), **kw),
        lambda g, q: qkv.kl_div_backward(g, q, from_torch(target), **kw),
        lambda xd: F.kl_div(xd, target.double(), **kw),
        x, "f32", f"kl_div {kw}",
    )


@pytest.mark.parametrize("temperature", [1.0, 2.0, 4.5])
@pytest.mark.parametrize("reduction", ["batchmean", "sum", "mean", "none"])
@pytest.mark.parametrize("shape", [(5, 10), (2, 3, 7)], ids=str)
def test_kl_div_distillation(shape, reduction, temperature):
    s = random_input(shape, "f32", seed=12)
    t = random_input(shape, "f32", seed=13)

    def reference(sd):
        # Hinton et al.: T^2 * KL(softmax(t / T) || softmax(s / T)).
        log_p_s = F.log_softmax(sd / temperature, dim=-1)
        log_p_t = F.log_softmax(t.double() / temperature, dim=-1)
        return F.kl_div(log_p_s, log_p_t, reduction=reduction, log_target=True) * temperature**2

    check_loss_and_grad(
        lambda q: qkv.kl_div_distillation(q, from_torch(t), temperature, reduction=reduction),
        lambda g, q: qkv.kl_div_distillation_backward(g, q, from_torch(t), temperature, reduction=reduction),
        reference,
        s, "f32", f"kl_div_distillation {shape} T={temperature} {reduction}",
    )


def test_kl_div_distillation_bf16_and_errors():
    s = random_input((4, 16), "bf16", seed=14)
    t = random_input((4, 16), "bf16", seed=15)
    ref = F.kl_div(F.log_softmax(s.double() / 3, -1), F.log_softmax(t.double() / 3, -1),
                   reduction="batchmean", log_target=True) * 9
    out = qkv.kl_div_distillation(from_torch(s), from_torch(t), 3.0)
    assert_matches_reference(out, ref, ref, "f32", what="distillation bf16")
    assert qkv.kl_div_distillation_backward(1.0, from_torch(s), from_torch(t), 3.0).dtype == "bf16"
    with pytest.raises(qkv.QkvError, match="temperature is 0"):
        qkv.kl_div_distillation(from_torch(s), from_torch(t), 0.0)
    with pytest.raises(qkv.QkvError, match=r"\[4, 16\].*\[4, 8\]"):
        qkv.kl_div_distillation(from_torch(s), from_torch(t[:, :8].contiguous()), 1.0)
    with pytest.raises(qkv.QkvError, match="batchmean"):
        qkv.mse_loss(from_torch(s), from_torch(t), reduction="batchmean")
