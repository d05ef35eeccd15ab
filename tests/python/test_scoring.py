"""General (Luong) and additive (Bahdanau) scoring against PyTorch fp64 autograd,
forward and every gradient (inputs and score weights)."""
import pytest
import torch

import qkv

F = torch.nn.functional


def _q(t):
    return qkv.from_dlpack(t.detach().float().contiguous())


def _t(x):
    return torch.from_dlpack(x).double()


def _inputs(seed, b=2, h=3, lq=9, lk=13, d=16):
    g = torch.Generator().manual_seed(seed)
    make = lambda *s: torch.randn(*s, dtype=torch.float64, generator=g).float().double().requires_grad_()
    return make(b, h, lq, d), make(b, h, lk, d), make(b, h, lk, d), g


def _reference(q, k, v, scores, causal, pad):
    if causal:
        lq, lk = scores.shape[-2:]
        scores = scores.masked_fill(torch.ones(lq, lk, dtype=torch.bool).triu(1), float("-inf"))
    if pad is not None:
        scores = scores.masked_fill(pad[:, None, None, :], float("-inf"))
    return torch.softmax(scores, -1) @ v


@pytest.mark.parametrize("causal", [False, True])
def test_general_matches_torch(causal):
    q, k, v, g = _inputs(1)
    w = (torch.randn(16, 16, dtype=torch.float64, generator=g) / 4).float().double().requires_grad_()
    ref = _reference(q, k, v, q @ w @ k.transpose(-1, -2), causal, None)
    go = torch.randn(ref.shape, dtype=torch.float64, generator=g)
    ref.backward(go)
    out, lse = qkv.general_attention(_q(q), _q(k), _q(v), _q(w), causal=causal)
    torch.testing.assert_close(_t(out), ref.detach(), rtol=0, atol=2e-6)
    grads = qkv.general_attention_backward(_q(go), _q(q), _q(k), _q(v), _q(w), out, lse, causal=causal)
    for name, t in (("q", q), ("k", k), ("v", v), ("w", w)):
        torch.testing.assert_close(_t(grads[name]), t.grad, rtol=1e-5, atol=1e-5, msg=name)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("padded", [False, True])
def test_additive_matches_torch(causal, padded):
    q, k, v, g = _inputs(2)
    a = 12
    make = lambda *s: (torch.randn(*s, dtype=torch.float64, generator=g) / 3).float().double().requires_grad_()
    w_q, w_k, v_a = make(a, 16), make(a, 16), make(a)
    pad = None
    if padded:
        pad = torch.zeros(2, 13, dtype=torch.bool)
        pad[1, 9:] = True
    # s_ij = v_a . tanh(W_q q_i + W_k k_j)
    u = (q @ w_q.T).unsqueeze(-2) + (k @ w_k.T).unsqueeze(-3)
    ref = _reference(q, k, v, torch.tanh(u) @ v_a, causal, pad)
    go = torch.randn(ref.shape, dtype=torch.float64, generator=g)
    ref.backward(go)
    extra = dict(causal=causal, key_padding_mask=qkv.from_dlpack(pad) if padded else None)
    out = qkv.additive_attention(_q(q), _q(k), _q(v), _q(w_q), _q(w_k), _q(v_a), **extra)
    torch.testing.assert_close(_t(out), ref.detach(), rtol=0, atol=1e-6)
    grads = qkv.additive_attention_backward(_q(go), _q(q), _q(k), _q(v), _q(w_q), _q(w_k), _q(v_a), **extra)
    for name, t in (("q", q), ("k", k), ("v", v), ("w_q", w_q), ("w_k", w_k), ("v_a", v_a)):
        torch.testing.assert_close(_t(grads[name]), t.grad, rtol=1e-5, atol=1e-6, msg=name)


def test_dot_scoring_is_unit_scale():
    q, k, v, _ = _inputs(3)
    ref = torch.softmax(q @ k.transpose(-1, -2), -1) @ v
    torch.testing.assert_close(_t(qkv.attention(_q(q), _q(k), _q(v), scale=1.0)), ref.detach(), rtol=0, atol=2e-6)


def test_scoring_errors():
    x = qkv.zeros([1, 2, 4, 8])
    with pytest.raises(qkv.QkvError, match="argument w has shape"):
        qkv.general_attention(x, x, x, qkv.zeros([8, 7]))
    with pytest.raises(qkv.QkvError, match="weights.w_k"):
        qkv.additive_attention(x, x, x, qkv.zeros([5, 8]), qkv.zeros([5, 7]), qkv.zeros([5]))
