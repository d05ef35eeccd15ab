"""Positional encodings against reference implementations written from the papers
(and the conventions of GPT-NeoX / Llama and GPT-J for rotary embeddings)."""
import math

import pytest
import torch

import qkv

F = torch.nn.functional


def _q(t):
    return qkv.from_dlpack(t.detach().float().contiguous())


def _t(x):
    return torch.from_dlpack(x).double()


def test_sinusoidal_matches_the_formula():
    for length, dim in ((1, 1), (50, 64), (33, 7)):
        pos = torch.arange(length, dtype=torch.float64)[:, None]
        i = torch.arange(dim)
        angle = pos / torch.pow(10000.0, (i // 2 * 2).double() / dim)
        ref = torch.where(i % 2 == 0, torch.sin(angle), torch.cos(angle))
        torch.testing.assert_close(_t(qkv.sinusoidal_positions(length, dim)), ref, rtol=0, atol=1e-6)


def _alibi_reference(n):
    # The ALiBi authors' get_slopes (Press et al. 2022).
    def power_of_2(n):
        start = 2 ** (-(2 ** -(math.log2(n) - 3)))
        return [start * start**i for i in range(n)]
    if math.log2(n).is_integer():
        return power_of_2(n)
    closest = 2 ** math.floor(math.log2(n))
    return power_of_2(closest) + _alibi_reference(2 * closest)[0::2][: n - closest]


@pytest.mark.parametrize("heads", [1, 2, 3, 5, 6, 8, 12, 16, 20, 25, 32, 40])
def test_alibi_slopes_match_the_paper(heads):
    assert qkv.alibi_slopes(heads) == pytest.approx(_alibi_reference(heads), rel=1e-6)


@pytest.mark.parametrize("causal", [False, True])
def test_alibi_inside_the_kernel_equals_a_dense_bias(causal):
    g = torch.Generator().manual_seed(0)
    b, h, l, d = 2, 6, 130, 32
    q, k, v = (torch.randn(b, h, l, d, dtype=torch.float64, generator=g).float().double().requires_grad_()
               for _ in range(3))
    slopes = torch.tensor(qkv.alibi_slopes(h), dtype=torch.float64)
    i = torch.arange(l)
    bias = -slopes[:, None, None] * (i[:, None] - i[None, :]).abs()
    if causal:
        bias = bias.masked_fill(torch.ones(l, l, dtype=torch.bool).triu(1), float("-inf"))
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
    go = torch.randn(ref.shape, dtype=torch.float64, generator=g)
    ref.backward(go)
    mod = qkv.alibi_score(qkv.alibi_slopes(h))
    out, lse = qkv.attention(_q(q), _q(k), _q(v), causal=causal, score_mod=mod, return_lse=True)
    torch.testing.assert_close(_t(out), ref.detach(), rtol=0, atol=2e-6)
    grads = qkv.attention_backward(_q(go), _q(q), _q(k), _q(v), output=out, lse=lse, causal=causal,
                                   score_mod=mod)
    for name, t in (("q", q), ("k", k), ("v", v)):
        torch.testing.assert_close(_t(grads[name]), t.grad, rtol=0, atol=1e-5, msg=name)


def _rope_reference(x, style, base=10000.0, scaling=1.0, offset=0, rotary_dim=None):
    d = x.shape[-1]
    rd = rotary_dim or d
    pos = (torch.arange(x.shape[-2], dtype=torch.float64) + offset) / scaling
    inv = base ** (-torch.arange(0, rd, 2, dtype=torch.float64) / rd)
    freqs = pos[:, None] * inv[None, :]  # [L, rd/2]
    rot, rest = x[..., :rd], x[..., rd:]
    if style == "rotate_half":  # GPT-NeoX / Llama: cat(freqs, freqs), rotate_half
        cos, sin = torch.cat([freqs, freqs], -1).cos(), torch.cat([freqs, freqs], -1).sin()
        x1, x2 = rot[..., : rd // 2], rot[..., rd // 2:]
        out = rot * cos + torch.cat([-x2, x1], -1) * sin
    else:  # GPT-J: repeat_interleave, rotate_every_two
        cos, sin = freqs.repeat_interleave(2, -1).cos(), freqs.repeat_interleave(2, -1).sin()
        x1, x2 = rot[..., 0::2], rot[..., 1::2]
        out = rot * cos + torch.stack([-x2, x1], -1).flatten(-2) * sin
    return torch.cat([out, rest], -1)


@pytest.mark.parametrize("style", ["rotate_half", "interleaved"])
@pytest.mark.parametrize("base,scaling,offset,rotary_dim", [(10000.0, 1.0, 0, None), (500000.0, 4.0, 37, None),
                                                              (10000.0, 1.0, 5, 32)])
def test_rope_matches_reference_forward_and_backward(style, base, scaling, offset, rotary_dim):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, 21, 64, dtype=torch.float64, generator=g).float().double().requires_grad_()
    ref = _rope_reference(x, style, base, scaling, offset, rotary_dim)
    go = torch.randn(ref.shape, dtype=torch.float64, generator=g)
    ref.backward(go)
    kw = dict(base=base, scaling=scaling, offset=offset, style=style, rotary_dim=rotary_dim or 0)
    torch.testing.assert_close(_t(qkv.rotary_embedding(_q(x), **kw)), ref.detach(), rtol=0, atol=2e-6)
    torch.testing.assert_close(_t(qkv.rotary_embedding_backward(_q(go), **kw)), x.grad, rtol=0, atol=2e-6)
    # [B, L, H, D] through the layout argument gives the same rotation.
    blhd = qkv.rotary_embedding(_q(x.transpose(1, 2)), layout="blhd", **kw)
    torch.testing.assert_close(_t(blhd).transpose(1, 2), ref.detach(), rtol=0, atol=2e-6)


def test_rope_keeps_relative_positions():
    # q_m . k_n depends only on m - n: shifting both by an offset changes nothing.
    g = torch.Generator().manual_seed(2)
    q, k = torch.randn(1, 1, 8, 32, generator=g), torch.randn(1, 1, 8, 32, generator=g)
    a = _t(qkv.rotary_embedding(_q(q))) @ _t(qkv.rotary_embedding(_q(k))).transpose(-1, -2)
    b = _t(qkv.rotary_embedding(_q(q), offset=100)) @ _t(qkv.rotary_embedding(_q(k), offset=100)).transpose(-1, -2)
    torch.testing.assert_close(a, b, rtol=0, atol=5e-5)


def test_position_errors():
    with pytest.raises(qkv.QkvError, match="rotary_dim"):
        qkv.rotary_embedding(qkv.zeros([1, 1, 4, 8]), rotary_dim=3)
    with pytest.raises(qkv.QkvError, match="style"):
        qkv.rotary_embedding(qkv.zeros([1, 1, 4, 8]), style="spiral")
    with pytest.raises(qkv.QkvError, match="heads"):
        qkv.alibi_slopes(0)
