"""Linformer, linear attention (elu + 1) and Performer FAVOR+ against naive
float64 PyTorch forms of their defining formulas (the explicit L x L product
with the causal mask), forward and every gradient (torch autograd in float64).

Tolerances follow conftest: qkv's error against the float64 reference may be at
most FACTOR x the error of the same naive formula run by torch in float32, plus
a floor of a few f32 ulps of the reference's magnitude.
"""
import math

import pytest
import torch

import qkv
from conftest import assert_matches_reference

F = torch.nn.functional


def _q(t):
    return qkv.from_dlpack(t.detach().float().contiguous())


def _inputs(seed, b=2, h=3, lq=9, lk=9, d=8, dv=6, scale=1.0):
    """f32-rounded values as float64 leaves: q [B,H,Lq,D], k [B,H,Lk,D], v [B,H,Lk,Dv], grad_out."""
    g = torch.Generator().manual_seed(seed)

    def make(*shape, s=1.0):
        return (torch.randn(*shape, dtype=torch.float64, generator=g) * s).float().double()

    return make(b, h, lq, d, s=scale), make(b, h, lk, d, s=scale), make(b, h, lk, dv), make(b, h, lq, dv)


def _check(name, fn, inputs, grad_out, got_out, got_grads):
    """fn(*inputs) in float64 is the reference, fn in float32 is torch's own error."""
    results = {}
    for dtype in (torch.float64, torch.float32):
        leaves = [x.detach().to(dtype).requires_grad_() for x in inputs]
        out = fn(*leaves)
        out.backward(grad_out.to(dtype))
        results[dtype] = (out.detach(), [x.grad for x in leaves])
    (ref, ref_grads), (theirs, their_grads) = results[torch.float64], results[torch.float32]
    assert_matches_reference(got_out, theirs, ref, "f32", what=f"{name} output")
    # The floor of every gradient is relative to the largest of them all: dq and
    # dk are sums of g_i . (v_j - out_i) terms, which cancel to ~eps where a
    # query sees one key (L = 1), and f32 rounding is relative to the terms.
    grad_scale = max(float(x.abs().max()) for x in ref_grads if x.numel())
    for (label, got), want, torch_grad in zip(got_grads.items(), ref_grads, their_grads):
        what = f"{name} grad {label}"
        assert_matches_reference(got, torch_grad, want, "f32", scale=max(grad_scale, 1e-30), what=what)


def _kernelised(phi_q, phi_k, v, causal, eps):
    """out_i = sum_j M_ij (phi_q_i . phi_k_j) v_j / (sum_j M_ij phi_q_i . phi_k_j + eps)."""
    a = phi_q @ phi_k.transpose(-1, -2)
    if causal:
        a = a * torch.ones(a.shape[-2:], dtype=a.dtype).tril()
    return (a @ v) / (a.sum(-1, keepdim=True) + eps)


def _elu1(x):
    return F.elu(x) + 1


def _performer_phi(x, w, queries):
    """exp(W x' - |x'|^2 / 2 - c) / sqrt(m), x' = x d^(-1/4); c held constant."""
    m, d = w.shape
    xs = x * d**-0.25
    a = xs @ w.T - (xs * xs).sum(-1, keepdim=True) / 2
    c = a.amax(-1, keepdim=True) if queries else a.amax((-2, -1), keepdim=True)
    return torch.exp(a - c.detach()) / math.sqrt(m)


# Lengths around the default chunk (64), and one that is many chunks long.
LENGTHS = [1, 5, 64, 65, 200]


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("length", LENGTHS)
def test_linear_attention_matches_reference(length, causal):
    q, k, v, go = _inputs(length, lq=length, lk=length)
    out = qkv.linear_attention(_q(q), _q(k), _q(v), causal=causal)
    grads = qkv.linear_attention_backward(_q(go), _q(q), _q(k), _q(v), causal=causal)
    fn = lambda q, k, v: _kernelised(_elu1(q), _elu1(k), v, causal, 1e-6)  # noqa: E731
    _check("linear_attention", fn, (q, k, v), go, out, grads)


@pytest.mark.parametrize("chunk", [1, 7, 16, 65, 500])
def test_linear_attention_chunk_sizes(chunk):
    q, k, v, go = _inputs(3, b=1, h=2, lq=65, lk=65, d=5, dv=7)
    kw = dict(causal=True, eps=1e-4, chunk=chunk)
    out = qkv.linear_attention(_q(q), _q(k), _q(v), **kw)
    grads = qkv.linear_attention_backward(_q(go), _q(q), _q(k), _q(v), **kw)
    fn = lambda q, k, v: _kernelised(_elu1(q), _elu1(k), v, True, 1e-4)  # noqa: E731
    _check(f"linear_attention chunk {chunk}", fn, (q, k, v), go, out, grads)


def test_linear_attention_cross_lengths():
    q, k, v, go = _inputs(4, lq=7, lk=30, d=12, dv=3)
    out = qkv.linear_attention(_q(q), _q(k), _q(v))
    grads = qkv.linear_attention_backward(_q(go), _q(q), _q(k), _q(v))
    fn = lambda q, k, v: _kernelised(_elu1(q), _elu1(k), v, False, 1e-6)  # noqa: E731
    _check("linear_attention Lq != Lk", fn, (q, k, v), go, out, grads)


def test_linear_attention_bf16_is_converted():
    q, k, v, _ = _inputs(5, lq=33, lk=33)
    qb, kb, vb = (x.to(torch.bfloat16) for x in (q, k, v))
    got = torch.from_dlpack(qkv.linear_attention(*(qkv.from_dlpack(x) for x in (qb, kb, vb)), causal=True))
    want = torch.from_dlpack(qkv.linear_attention(*(_q(x.double()) for x in (qb, kb, vb)), causal=True))
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=0, atol=0)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("length", LENGTHS)
def test_performer_matches_reference(length, causal):
    # m = 20 features of d = 8: two whole orthogonal blocks and a truncated one.
    q, k, v, go = _inputs(10 + length, lq=length, lk=length, scale=0.8)
    w = torch.from_dlpack(qkv.performer_projection(20, 8, seed=length)).double()
    out = qkv.performer_attention(_q(q), _q(k), _q(v), _q(w), causal=causal)
    grads = qkv.performer_attention_backward(_q(go), _q(q), _q(k), _q(v), _q(w), causal=causal)

    def fn(q, k, v):
        wd = w.to(q.dtype)
        return _kernelised(_performer_phi(q, wd, True), _performer_phi(k, wd, False), v, causal, 1e-6)

    _check("performer_attention", fn, (q, k, v), go, out, grads)


def test_performer_projection_blocks_are_orthogonal():
    m, d = 40, 16
    w = torch.from_dlpack(qkv.performer_projection(m, d, seed=3)).double()
    assert w.shape == (m, d)
    for start in range(0, m, d):
        block = w[start : start + d]
        gram = block @ block.T
        off = gram - torch.diag(torch.diag(gram))
        assert off.abs().max() < 1e-5 * gram.diag().max(), f"block at row {start} is not orthogonal"
    # Row norms are chi_d draws, not all equal (the regularised variant).
    norms = w.norm(dim=1)
    assert norms.std() > 0.1 and abs(float(norms.mean()) - math.sqrt(d)) < 1.0
    again = torch.from_dlpack(qkv.performer_projection(m, d, seed=3))
    torch.testing.assert_close(again.double(), w, rtol=0, atol=0)
    other = torch.from_dlpack(qkv.performer_projection(m, d, seed=4)).double()
    assert (other - w).abs().max() > 0.1


def test_performer_approximates_softmax_attention():
    # d = 16, small-norm inputs (|q|, |k| ~ 1): FAVOR+ is an unbiased estimate
    # of exp(q.k / sqrt(d)) whose variance grows like exp(|q + k|^2 / sqrt(d)),
    # so it is only accurate for small norms; its error falls like 1/sqrt(m).
    q, k, v, _ = _inputs(7, b=1, h=2, lq=64, lk=64, d=16, dv=16, scale=0.25)
    for causal in (False, True):
        want = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
        rel = {}
        for m in (256, 4096):
            w = qkv.performer_projection(m, 16, seed=1)
            got = torch.from_dlpack(qkv.performer_attention(_q(q), _q(k), _q(v), w, causal=causal)).double()
            rel[m] = float((got - want).norm() / want.norm())
        assert rel[256] < 0.1, f"causal={causal}: relative error {rel[256]:.3f} with m = 256"
        assert rel[4096] < rel[256] / 2, f"causal={causal}: more features do not help: {rel}"


@pytest.mark.parametrize("per_head", [False, True])
@pytest.mark.parametrize("lq,lk,kproj", [(1, 5, 3), (9, 64, 16), (65, 200, 32)])
def test_linformer_matches_reference(per_head, lq, lk, kproj):
    q, k, v, go = _inputs(20 + lk, lq=lq, lk=lk)
    g = torch.Generator().manual_seed(lk)
    shape = (3, kproj, lk) if per_head else (kproj, lk)
    e = (torch.randn(shape, dtype=torch.float64, generator=g) / math.sqrt(lk)).float().double()
    f = (torch.randn(shape, dtype=torch.float64, generator=g) / math.sqrt(lk)).float().double()
    out, lse = qkv.linformer_attention(_q(q), _q(k), _q(v), _q(e), _q(f), scale=0.3)
    grads = qkv.linformer_attention_backward(_q(go), _q(q), _q(k), _q(v), _q(e), _q(f), out, lse, scale=0.3)

    def fn(q, k, v, e, f):
        return torch.softmax(0.3 * q @ (e @ k).transpose(-1, -2), -1) @ (f @ v)

    _check("linformer_attention", fn, (q, k, v, e, f), go, out, grads)


def test_argument_errors():
    x = qkv.zeros([1, 2, 5, 4])
    with pytest.raises(qkv.QkvError, match="linear_attention: k has 5 keys but v has 6"):
        qkv.linear_attention(x, x, qkv.zeros([1, 2, 6, 4]))
    with pytest.raises(qkv.QkvError, match="causal needs as many queries as keys"):
        qkv.linear_attention(x, qkv.zeros([1, 2, 6, 4]), qkv.zeros([1, 2, 6, 4]), causal=True)
    with pytest.raises(qkv.QkvError, match="options.chunk is 0"):
        qkv.linear_attention_backward(x, x, x, x, chunk=0)
    with pytest.raises(qkv.QkvError, match=r"performer_attention: argument w has shape \[8, 3\]"):
        qkv.performer_attention(x, x, x, qkv.zeros([8, 3]))
    with pytest.raises(qkv.QkvError, match="performer_projection: argument dim is 0"):
        qkv.performer_projection(8, 0)
    e = qkv.zeros([3, 5])
    with pytest.raises(qkv.QkvError, match=r"linformer_attention: argument e has shape \[3, 4\]"):
        qkv.linformer_attention(x, x, x, qkv.zeros([3, 4]), e)
    with pytest.raises(qkv.QkvError, match="grad_output has shape"):
        out, lse = qkv.linformer_attention(x, x, x, e, e)
        qkv.linformer_attention_backward(qkv.zeros([1, 2, 4, 4]), x, x, x, e, e, out, lse)
    with pytest.raises(qkv.QkvError, match="linformer_attention: options.causal is not supported"):
        qkv.linformer_attention(x, x, x, e, e, causal=True)
