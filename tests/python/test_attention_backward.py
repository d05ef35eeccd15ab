"""qkv.attention_backward, dropout and attention weights against PyTorch (fp64 autograd).

Error rule (FlashAttention's): qkv's error against the fp64 reference is at most
twice PyTorch's own f32 error on the same inputs, plus a small absolute floor.
"""
import pytest
import torch

import qkv

F = torch.nn.functional


def _q(t):
    return qkv.from_dlpack(t.detach().float().contiguous())


def _t(x):
    return torch.from_dlpack(x).double()


CASES = [
    # B, Hq, Hkv, Lq, Lk, D, causal
    (1, 1, 1, 1, 1, 16, False),
    (2, 4, 2, 77, 131, 64, False),
    (1, 2, 2, 100, 100, 32, True),
    (2, 8, 1, 33, 65, 80, False),
    (1, 2, 2, 129, 200, 128, True),
    (1, 2, 1, 113, 203, 16, False),
    (2, 2, 2, 203, 113, 32, True),
    (1, 4, 4, 256, 256, 64, True),
    (1, 2, 2, 64, 300, 256, False),
    (3, 6, 3, 1, 257, 128, False),
    (1, 1, 1, 97, 97, 80, True),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: "B{}-H{}/{}-{}x{}-D{}-causal{}".format(*c))
def test_backward_matches_fp64_autograd(case):
    b, hq, hkv, lq, lk, d, causal = case
    gen = torch.Generator().manual_seed(hash(case) % 2**31)
    q, k, v = (torch.randn(b, h, n, d, dtype=torch.float64, generator=gen).float().double().requires_grad_()
               for h, n in ((hq, lq), (hkv, lk), (hkv, lk)))
    o = F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=True)
    go = torch.randn(o.shape, dtype=torch.float64, generator=gen).float().double()
    o.backward(go)
    out, lse = qkv.attention(_q(q), _q(k), _q(v), causal=causal, return_lse=True)
    g = qkv.attention_backward(_q(go), _q(q), _q(k), _q(v), output=out, lse=lse, causal=causal)
    q32, k32, v32 = (x.detach().float().requires_grad_() for x in (q, k, v))
    F.scaled_dot_product_attention(q32, k32, v32, is_causal=causal, enable_gqa=True).backward(go.float())
    for name, ref, theirs in (("q", q.grad, q32.grad), ("k", k.grad, k32.grad), ("v", v.grad, v32.grad)):
        ours = (_t(g[name]) - ref).abs().max().item()
        torch_err = (theirs.double() - ref).abs().max().item()
        # The FlashAttention rule; the floor (about one f32 ulp of the gradient) only
        # matters where torch is exact, e.g. dQ = 0 for a single key.
        bound = 2 * torch_err + 1e-7 * (1 + ref.abs().max().item())
        assert ours <= bound, f"d{name}: qkv error {ours:.3e} > 2 x torch's {torch_err:.3e}"


def test_mask_gradient_and_padding():
    gen = torch.Generator().manual_seed(3)
    b, h, lq, lk, d = 2, 3, 40, 56, 32
    q, k, v = (torch.randn(b, h, n, d, dtype=torch.float64, generator=gen).float().double().requires_grad_()
               for n in (lq, lk, lk))
    bias = torch.randn(h, lq, lk, dtype=torch.float64, generator=gen).float().double().requires_grad_()
    pad = torch.zeros(b, lk, dtype=torch.bool)
    pad[1, 40:] = True
    mask = bias.unsqueeze(0).masked_fill(pad[:, None, None, :], float("-inf"))
    o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    go = torch.randn(o.shape, dtype=torch.float64, generator=gen).float().double()
    o.backward(go)
    args = dict(mask=_q(bias), key_padding_mask=qkv.from_dlpack(pad))
    out, lse = qkv.attention(_q(q), _q(k), _q(v), return_lse=True, **args)
    g = qkv.attention_backward(_q(go), _q(q), _q(k), _q(v), output=out, lse=lse,
                               mask_requires_grad=True, **args)
    assert tuple(g["mask"].shape) == (h, lq, lk)
    for name, ref in (("q", q.grad), ("k", k.grad), ("v", v.grad), ("mask", bias.grad)):
        err = (_t(g[name]) - ref).abs().max().item()
        assert err < 5e-6 * (1 + ref.abs().max().item()), (name, err)


def test_fully_masked_rows_have_zero_gradients():
    q, k, v = (torch.randn(1, 2, 8, 16) for _ in range(3))
    allowed = torch.ones(8, 8, dtype=torch.bool)
    allowed[3] = False
    out, lse = qkv.attention(_q(q), _q(k), _q(v), mask=qkv.from_dlpack(allowed), return_lse=True)
    g = qkv.attention_backward(_q(torch.ones(1, 2, 8, 16)), _q(q), _q(k), _q(v), output=out, lse=lse,
                               mask=qkv.from_dlpack(allowed))
    dq = _t(g["q"])
    assert torch.isfinite(dq).all() and (dq[:, :, 3] == 0).all()
    assert torch.isinf(_t(lse)[:, :, 3]).all()


def test_dropout_equals_explicit_mask_forward_and_backward():
    gen = torch.Generator().manual_seed(7)
    b, h, l, d, p, seed = 2, 3, 50, 32, 0.2, 5
    q, k, v = (torch.randn(b, h, l, d, dtype=torch.float64, generator=gen).float().double().requires_grad_()
               for _ in range(3))
    keep = _t(qkv.attention_dropout_mask(b, h, l, l, p, seed))
    probs = torch.softmax(q @ k.transpose(-1, -2) / d**0.5, -1)
    o = (probs * keep / (1 - p)) @ v
    go = torch.randn(o.shape, dtype=torch.float64, generator=gen)
    o.backward(go)
    out, lse, weights = qkv.attention(_q(q), _q(k), _q(v), dropout=p, dropout_seed=seed,
                                      return_lse=True, weights_heads=[0, 2])
    g = qkv.attention_backward(_q(go), _q(q), _q(k), _q(v), output=out, lse=lse, dropout=p,
                               dropout_seed=seed)
    assert (_t(out) - o).abs().max().item() < 2e-6
    assert (_t(weights) - probs[:, [0, 2]]).abs().max().item() < 1e-6  # before dropout
    for name, t in (("q", q), ("k", k), ("v", v)):
        assert (_t(g[name]) - t.grad).abs().max().item() < 3e-6, name
    # The same seed gives the same result; another seed another one.
    again = qkv.attention(_q(q), _q(k), _q(v), dropout=p, dropout_seed=seed)
    other = qkv.attention(_q(q), _q(k), _q(v), dropout=p, dropout_seed=seed + 1)
    assert torch.equal(torch.from_dlpack(again), torch.from_dlpack(out))
    assert not torch.equal(torch.from_dlpack(other), torch.from_dlpack(out))


def test_backward_errors():
    q = qkv.zeros([1, 2, 4, 8])
    out, lse = qkv.attention(q, q, q, return_lse=True)
    with pytest.raises(qkv.QkvError, match="grad_output"):
        qkv.attention_backward(qkv.zeros([1, 2, 4, 7]), q, q, q, output=out, lse=lse)
    with pytest.raises(qkv.QkvError, match="lse"):
        qkv.attention_backward(qkv.zeros([1, 2, 4, 8]), q, q, q, output=out)
    with pytest.raises(qkv.QkvError, match="dropout"):
        qkv.attention(q, q, q, dropout=1.0)
