"""Learned relative positions inside the fused kernel: T5's bucketed bias and Shaw
et al.'s clipped relative keys and values, against PyTorch code written from the
papers (T5's bucketing as transformers' T5Attention._relative_position_bucket,
and transformers' own function where it is installed), forward and every
gradient, in float64."""
import math

import pytest
import torch

import qkv
from conftest import assert_close_scaled, f32, f64

F = torch.nn.functional




def assert_close_scaled(got, want, what, rel=2e-6):
    """|got - want| <= rel * max(max|want|, 1) (f32 kernels against a float64
    reference; inputs here are O(1), so a vanishing reference is held to that scale)."""
    scale = max(float(want.abs().max()), 1.0) if want.numel() else 1.0
    err = float((got - want).abs().max()) if want.numel() else 0.0
    assert err <= rel * scale, f"{what}: max error {err:.3e} > {rel:.1e} x {scale:.3e}"


def _inputs(shape_q, shape_kv, seed, dv=None):
    g = torch.Generator().manual_seed(seed)
    b, h, lq, d = shape_q
    bk, hk, lk, _ = shape_kv
    q = torch.randn(b, h, lq, d, dtype=torch.float64, generator=g).float().double()
    k = torch.randn(bk, hk, lk, d, dtype=torch.float64, generator=g).float().double()
    v = torch.randn(bk, hk, lk, dv or d, dtype=torch.float64, generator=g).float().double()
    return [t.requires_grad_() for t in (q, k, v)], g


# ---- T5 ---------------------------------------------------------------------


def _t5_bucket_reference(relative_position, bidirectional=True, num_buckets=32, max_distance=128):
    """transformers' T5Attention._relative_position_bucket, transcribed."""
    relative_buckets = 0
    if bidirectional:
        num_buckets //= 2
        relative_buckets += (relative_position > 0).to(torch.long) * num_buckets
        relative_position = torch.abs(relative_position)
    else:
        relative_position = -torch.min(relative_position, torch.zeros_like(relative_position))
    max_exact = num_buckets // 2
    is_small = relative_position < max_exact
    large = max_exact + (
        torch.log(relative_position.float() / max_exact) / math.log(max_distance / max_exact)
        * (num_buckets - max_exact)
    ).to(torch.long)
    large = torch.min(large, torch.full_like(large, num_buckets - 1))
    return relative_buckets + torch.where(is_small, relative_position, large)


def _t5_bucket_function():
    try:
        from transformers.models.t5.modeling_t5 import T5Attention
    except ImportError:
        return _t5_bucket_reference
    return T5Attention._relative_position_bucket


@pytest.mark.parametrize("bidirectional,num_buckets,max_distance",
                         [(True, 32, 128), (False, 32, 128), (True, 64, 256), (False, 16, 50), (True, 8, 20)])
def test_t5_buckets_match_transformers(bidirectional, num_buckets, max_distance):
    rel = torch.arange(-2000, 2001)
    want = _t5_bucket_function()(rel, bidirectional, num_buckets, max_distance)
    got = torch.tensor([qkv.t5_relative_bucket(int(r), bidirectional, num_buckets, max_distance)
                        for r in rel])
    assert torch.equal(got, want), (got != want).nonzero()[:5]


def _t5_dense_bias(table, lq, lk, bidirectional, num_buckets, max_distance, offset=0):
    rel = torch.arange(lk)[None, :] - torch.arange(lq)[:, None] - offset
    buckets = _t5_bucket_reference(rel, bidirectional, num_buckets, max_distance)
    return table[buckets].permute(2, 0, 1).unsqueeze(0)  # [1, H, Lq, Lk]


@pytest.mark.parametrize("bidirectional,causal,lq,lk,offset", [
    (True, False, 130, 130, 0), (False, True, 200, 200, 0), (True, False, 1, 300, 299),
    (False, "bottom_right", 5, 260, 255), (True, False, 257, 33, 0)])
def test_t5_bias_inside_the_kernel_equals_a_dense_bias(bidirectional, causal, lq, lk, offset):
    h, nb, md = 4, 32, 128
    (q, k, v), g = _inputs((2, h, lq, 16), (2, h, lk, 16), seed=lq + lk)
    table = (torch.randn(nb, h, dtype=torch.float64, generator=g) * 2).float().double().requires_grad_()
    bias = _t5_dense_bias(table, lq, lk, bidirectional, nb, md, offset)
    if causal:
        diag = 0 if causal is True else lk - lq
        hidden = torch.ones(lq, lk, dtype=torch.bool).triu(1 + diag)
        bias = bias.masked_fill(hidden, float("-inf"))
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=1.0)  # T5 does not scale
    go = torch.randn(ref.shape, dtype=torch.float64, generator=g)
    ref.backward(go)
    mod = qkv.t5_bias_score(f32(table), bidirectional=bidirectional, num_buckets=nb, max_distance=md,
                            query_offset=offset)
    out, lse = qkv.attention(f32(q), f32(k), f32(v), scale=1.0, causal=causal, score_mod=mod, return_lse=True)
    assert_close_scaled(f64(out), ref.detach(), "output")
    for reference in (False, True):
        grads = qkv.attention_backward(f32(go), f32(q), f32(k), f32(v), output=out, lse=lse, scale=1.0,
                                       causal=causal, score_mod=mod, reference=reference)
        for name, t in (("q", q), ("k", k), ("v", v)):
            assert_close_scaled(f64(grads[name]), t.grad, f"d{name} (reference={reference})", rel=1e-5)
        assert len(grads["score_mod"]) == 1
        assert_close_scaled(f64(grads["score_mod"][0]), table.grad, f"d table (reference={reference})", rel=1e-5)


def test_t5_bias_chained_with_softcap_gets_gradients_through_the_cap():
    h, nb, md, l = 2, 16, 40, 70
    (q, k, v), g = _inputs((1, h, l, 8), (1, h, l, 8), seed=5)
    table = torch.randn(nb, h, dtype=torch.float64, generator=g).float().double().requires_grad_()
    cap = 3.0
    s = q @ k.transpose(-1, -2) / math.sqrt(8) + _t5_dense_bias(table, l, l, True, nb, md)
    ref = torch.softmax(cap * torch.tanh(s / cap), -1) @ v
    go = torch.randn(ref.shape, dtype=torch.float64, generator=g)
    ref.backward(go)
    mod = qkv.score_chain(qkv.t5_bias_score(f32(table), num_buckets=nb, max_distance=md), qkv.softcap_score(cap))
    out, lse = qkv.attention(f32(q), f32(k), f32(v), score_mod=mod, return_lse=True)
    assert_close_scaled(f64(out), ref.detach(), "output")
    grads = qkv.attention_backward(f32(go), f32(q), f32(k), f32(v), output=out, lse=lse, score_mod=mod)
    for name, t in (("q", q), ("k", k), ("v", v)):
        assert_close_scaled(f64(grads[name]), t.grad, f"d{name}", rel=1e-5)
    assert_close_scaled(f64(grads["score_mod"][0]), table.grad, "d table", rel=1e-5)


def test_t5_bias_errors():
    with pytest.raises(qkv.QkvError, match="num_buckets"):
        qkv.t5_bias_score(qkv.zeros([3, 2]), num_buckets=3)
    with pytest.raises(qkv.QkvError, match=r"\[num_buckets = 32, heads\]"):
        qkv.t5_bias_score(qkv.zeros([16, 2]))
    mod = qkv.t5_bias_score(qkv.zeros([32, 2]))
    x = qkv.zeros([1, 3, 4, 8])
    with pytest.raises(qkv.QkvError, match="2 heads; the attention has 3"):
        qkv.attention(x, x, x, score_mod=mod)


# ---- Shaw -------------------------------------------------------------------


def _shaw_reference(q, k, v, ak, av, kd, offset=0, scale=None, causal=False, layout="bhld"):
    """Shaw et al. 2018, eqs. (3)-(4): relative a^K in the logits, a^V in the outputs."""
    lq, lk, d = q.shape[-2], k.shape[-2], q.shape[-1]
    scale = 1 / math.sqrt(d) if scale is None else scale
    rel = torch.arange(lk)[None, :] - torch.arange(lq)[:, None] - offset
    idx = rel.clamp(-kd, kd) + kd
    hq, hk = q.shape[1], k.shape[1]
    k = k.repeat_interleave(hq // hk, 1)
    v = v.repeat_interleave(hq // hk, 1)
    e = q @ k.transpose(-1, -2)
    if ak is not None:
        e = e + torch.einsum("bhid,ijd->bhij", q, ak[idx])
    e = e * scale
    if causal:
        diag = 0 if causal is True else lk - lq
        e = e.masked_fill(torch.ones(lq, lk, dtype=torch.bool).triu(1 + diag), float("-inf"))
    p = torch.softmax(e, -1)
    out = p @ v
    if av is not None:
        out = out + torch.einsum("bhij,ijd->bhid", p, av[idx])
    return out


@pytest.mark.parametrize("lq,lk,kd,offset,causal,terms,hk", [
    (7, 7, 2, 0, False, "kv", 2), (130, 130, 16, 0, False, "kv", 2), (200, 200, 4, 0, True, "kv", 1),
    (1, 1, 1, 0, False, "kv", 2), (250, 250, 3, 0, False, "k", 2), (250, 250, 3, 0, False, "v", 2),
    (5, 300, 8, 295, "bottom_right", "kv", 2), (64, 40, 70, 0, False, "kv", 2), (300, 300, 128, 0, True, "kv", 2)])
@pytest.mark.parametrize("layout", ["bhld", "blhd"])
def test_shaw_matches_the_paper_forward_and_backward(lq, lk, kd, offset, causal, terms, hk, layout):
    h, d, dv = 2, 16, 12
    (q, k, v), g = _inputs((2, h, lq, d), (2, hk, lk, d), seed=lq * 7 + kd, dv=dv)
    ak = (torch.randn(2 * kd + 1, d, dtype=torch.float64, generator=g) * 0.5).float().double().requires_grad_()
    av = (torch.randn(2 * kd + 1, dv, dtype=torch.float64, generator=g)).float().double().requires_grad_()
    ak_used = ak if "k" in terms else None
    av_used = av if "v" in terms else None
    ref = _shaw_reference(q, k, v, ak_used, av_used, kd, offset, causal=causal)
    go = torch.randn(ref.shape, dtype=torch.float64, generator=g)
    ref.backward(go)

    def lay(t):  # [B, H, L, D] -> the tested layout
        return f32(t if layout == "bhld" else t.transpose(1, 2))

    def unlay(x):
        t = f64(x)
        return t if layout == "bhld" else t.transpose(1, 2)

    kw = dict(key=f32(ak) if ak_used is not None else None, value=f32(av) if av_used is not None else None,
              max_distance=kd, query_offset=offset, causal=causal, layout=layout)
    r = qkv.shaw_attention(lay(q), lay(k), lay(v), **kw)
    assert_close_scaled(unlay(r["output"]), ref.detach(), "output")
    grads = qkv.shaw_attention_backward(lay(go), lay(q), lay(k), lay(v), r["output"], r["lse"],
                                        r["value_weights"], **kw)
    for name, t in (("q", q), ("k", k), ("v", v)):
        assert_close_scaled(unlay(grads[name]), t.grad, f"d{name}", rel=1e-5)
    if ak_used is not None:
        assert_close_scaled(f64(grads["key"]), ak.grad, "d a^K", rel=1e-5)
    else:
        assert grads["key"] is None
    if av_used is not None:
        assert_close_scaled(f64(grads["value"]), av.grad, "d a^V", rel=1e-5)
        # The per-distance mass of each row sums to 1.
        mass = f64(r["value_weights"]).sum(-1)
        assert_close_scaled(mass, torch.ones_like(mass), "value weights' row sums")


def test_shaw_errors():
    x = qkv.zeros([1, 2, 5, 8])
    with pytest.raises(qkv.QkvError, match="max_distance must be >= 1"):
        qkv.shaw_attention(x, x, x, key=qkv.zeros([3, 8]), max_distance=0)
    with pytest.raises(qkv.QkvError, match=r"positions.key has shape \[3, 4\].*\[5, 8\]"):
        qkv.shaw_attention(x, x, x, key=qkv.zeros([3, 4]), max_distance=2)
    with pytest.raises(qkv.QkvError, match="value_weights is missing"):
        r = qkv.shaw_attention(x, x, x, value=qkv.zeros([5, 8]), max_distance=2)
        qkv.shaw_attention_backward(x, x, x, x, r["output"], r["lse"], None, value=qkv.zeros([5, 8]),
                                    max_distance=2)
