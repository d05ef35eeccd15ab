"""qkv.MultiheadAttention (qkv.nn.MultiheadAttention) configured by variant (SPEC §2-3): masks (sliding window,
Longformer), positions (ALiBi, T5, rotary, Shaw) and kernels (Linformer, linear,
Performer), against a float64 PyTorch layer written from the definitions with the
same weights: outputs, input gradients and every parameter's gradient."""
import math

import pytest
import torch

import qkv
from conftest import assert_close_scaled, f32, f64

F = torch.nn.functional
E, H, L, BATCH = 32, 4, 37, 2
DH = E // H





def _rope(x, base=10000.0):  # rotate-half on [B, H, L, D]
    d = x.shape[-1]
    inv = base ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)
    freqs = torch.arange(x.shape[-2], dtype=torch.float64)[:, None] * inv[None, :]
    cos, sin = torch.cat([freqs, freqs], -1).cos(), torch.cat([freqs, freqs], -1).sin()
    x1, x2 = x[..., : d // 2], x[..., d // 2:]
    return x * cos + torch.cat([-x2, x1], -1) * sin


def _t5_bias(table, bidirectional=True, num_buckets=32, max_distance=128):
    rel = torch.arange(L)[None, :] - torch.arange(L)[:, None]
    b = torch.tensor([[qkv.t5_relative_bucket(int(r), bidirectional, num_buckets, max_distance) for r in row]
                      for row in rel])
    return table[b].permute(2, 0, 1)  # [H, L, L]


def _phi_performer(x, w, per_row):
    """FAVOR+ features with qkv's stabiliser (a constant to autograd): the largest
    exponent per query row, or per (batch, head) over every key; it cancels in the
    ratio except against eps."""
    xs = x * DH ** -0.25
    e = xs @ w.T - (xs * xs).sum(-1, keepdim=True) / 2
    c = e.amax(-1, keepdim=True) if per_row else e.amax((-2, -1), keepdim=True)
    return torch.exp(e - c.detach()) / math.sqrt(w.shape[0])


def _kernelised(fq, fk, v, causal, eps=1e-6):
    a = fq @ fk.transpose(-1, -2)
    if causal:
        a = a.masked_fill(torch.ones(L, L, dtype=torch.bool).triu(1), 0)
    return (a @ v) / (a.sum(-1, keepdim=True) + eps)


def _attend(variant, p, q, k, v, causal):
    """The heads' mixing of each variant on [B, H, L, Dh] float64 tensors."""
    scale = 1 / math.sqrt(DH)
    mask = torch.ones(L, L, dtype=torch.bool).tril() if causal else torch.ones(L, L, dtype=torch.bool)
    bias = torch.zeros(H, L, L, dtype=torch.float64)
    if variant == "window":
        i = torch.arange(L)
        mask = mask & ((i[None, :] - i[:, None]) >= -3) & ((i[None, :] - i[:, None]) <= 2)
    if variant == "longformer":
        i = torch.arange(L)
        glob = torch.zeros(L, dtype=torch.bool)
        glob[[0, 20]] = True
        mask = (((i[None, :] - i[:, None]).abs() <= 4) | glob[:, None] | glob[None, :])
    if variant == "alibi":
        slopes = torch.tensor(qkv.alibi_slopes(H), dtype=torch.float64)
        i = torch.arange(L)
        bias = -slopes[:, None, None] * (i[:, None] - i[None, :]).abs()
    if variant == "t5":
        bias = _t5_bias(p["relative_attention_bias.weight"])
    if variant == "rotary":
        q, k = _rope(q), _rope(k)
    if variant == "shaw":
        kd = 5
        idx = (torch.arange(L)[None, :] - torch.arange(L)[:, None]).clamp(-kd, kd) + kd
        s = (q @ k.transpose(-1, -2) + torch.einsum("bhid,ijd->bhij", q, p["relative_key"][idx])) * scale
        pr = torch.softmax(s.masked_fill(~mask, float("-inf")), -1)
        return pr @ v + torch.einsum("bhij,ijd->bhid", pr, p["relative_value"][idx])
    if variant == "linformer":
        kp, vp = p["linformer_e"] @ k, p["linformer_f"] @ v
        return torch.softmax(q @ kp.transpose(-1, -2) * scale, -1) @ vp
    if variant == "linear":
        return _kernelised(F.elu(q) + 1, F.elu(k) + 1, v, causal)
    if variant == "performer":
        w = p["performer_w"]
        return _kernelised(_phi_performer(q, w, True), _phi_performer(k, w, False), v, causal)
    s = q @ k.transpose(-1, -2) * scale + bias
    return torch.softmax(s.masked_fill(~mask, float("-inf")), -1) @ v


def _reference(variant, p, x, causal):
    q, k, v = (F.linear(x, p["in_proj_weight"][i * E:(i + 1) * E], p["in_proj_bias"][i * E:(i + 1) * E])
               .view(BATCH, L, H, DH).transpose(1, 2) for i in range(3))
    heads = _attend(variant, p, q, k, v, causal).transpose(1, 2).reshape(BATCH, L, E)
    return F.linear(heads, p["out_proj.weight"], p["out_proj.bias"])


VARIANTS = {
    "window": dict(mask_mod=lambda: qkv.sliding_window_mask(3, 2)),
    "longformer": dict(mask_mod=lambda: qkv.longformer_mask(4, 4, [0, 20])),
    "alibi": dict(positions="alibi"),
    "t5": dict(positions="t5"),
    "rotary": dict(positions="rotary"),
    "shaw": dict(positions="shaw", shaw_max_distance=5),
    "linformer": dict(kernel="linformer", max_length=L, linformer_k=16),
    "linear": dict(kernel="linear"),
    "performer": dict(kernel="performer", performer_features=64, performer_seed=3),
}
NEW_PARAMETERS = {"t5": {"relative_attention_bias.weight": (32, H)},
                  "shaw": {"relative_key": (11, DH), "relative_value": (11, DH)},
                  "linformer": {"linformer_e": (16, L), "linformer_f": (16, L)}}


# Linformer cannot be causal, and the Longformer case here is the bidirectional pattern.
CASES = [(v, c) for v in sorted(VARIANTS) for c in (False, True)
         if not (c and v in ("linformer", "longformer"))]


def _variant_kwargs(variant):
    return {n: (f() if callable(f) else f) for n, f in VARIANTS[variant].items()}


def _definition(variant, causal, state_dict, seed):
    """The float64 definition with a layer's weights, run forward and backward:
    (its parameters with their gradients, input x with its gradient, output, dOutput)."""
    params = {n: f64(t).clone().requires_grad_() for n, t in state_dict.items()}
    for name, shape in NEW_PARAMETERS.get(variant, {}).items():
        assert tuple(params[name].shape) == shape, name
    if variant == "performer":
        params["performer_w"] = f64(qkv.performer_projection(64, DH, 3))
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(BATCH, L, E, generator=g, dtype=torch.float64).float().double().requires_grad_()
    ref = _reference(variant, params, x, causal)
    go = torch.randn(ref.shape, generator=g, dtype=torch.float64)
    ref.backward(go)
    return params, x, ref, go


def _mha(**kwargs):
    variant = qkv.nn.AttentionVariant(**{k: kwargs.pop(k) for k in list(kwargs)
                                         if k not in ("batch_first", "seed")})
    return qkv.MultiheadAttention(E, H, variant=variant, **kwargs)


@pytest.mark.parametrize("variant,causal", CASES)
def test_variant_matches_its_definition(variant, causal):
    """With the weights (torch's default need_weights) and an additive causal mask
    beside is_causal where the kernel forms weights."""
    mha = _mha(batch_first=True, seed=7, **_variant_kwargs(variant))
    params, x, ref, go = _definition(variant, causal, mha.state_dict(), seed=11)
    xv = qkv.autograd.Variable(f32(x), True)
    weights = variant not in ("linformer", "linear", "performer")
    out, w = mha(xv, xv, xv, need_weights=weights, is_causal=causal,
                 attn_mask=f32(torch.zeros(L, L).masked_fill(torch.ones(L, L, dtype=torch.bool).triu(1),
                                                            float("-inf"))) if causal and weights else None)
    assert (w is not None) == weights
    assert_close_scaled(f64(out.value), ref.detach(), f"{variant} output", rel=2e-5)
    qkv.autograd.sum(qkv.autograd.mul(out, qkv.autograd.Variable(f32(go)))).backward()
    assert_close_scaled(f64(xv.grad), x.grad, f"{variant} d input", rel=1e-4)
    grads = dict(mha.named_parameters())
    assert sorted(grads) == sorted(mha.state_dict())
    for name, p in grads.items():
        assert_close_scaled(f64(p.grad), params[name].grad, f"{variant} d {name}", rel=1e-4)


def test_performer_features_redraw():
    mha = _mha(batch_first=True, kernel="performer", performer_features=32)
    x = qkv.autograd.Variable(qkv.from_dlpack(torch.randn(1, 9, E)))
    a = f64(mha(x, x, x, need_weights=False)[0].value)
    mha.redraw_features(5)
    b = f64(mha(x, x, x, need_weights=False)[0].value)
    mha.redraw_features(0)
    c = f64(mha(x, x, x, need_weights=False)[0].value)
    assert not torch.equal(a, b) and torch.equal(a, c)


def test_variant_errors():
    with pytest.raises(qkv.QkvError, match="positions must be"):
        _mha(positions="relative")
    with pytest.raises(qkv.QkvError, match="kernel must be"):
        _mha(kernel="fast")
    with pytest.raises(qkv.QkvError, match="needs the softmax kernel"):
        _mha(kernel="linear", mask_mod=qkv.sliding_window_mask(2, 2))
    with pytest.raises(qkv.QkvError, match="max_length > 0"):
        _mha(kernel="linformer")
    mha = _mha(batch_first=True, kernel="linear")
    x = qkv.autograd.Variable(qkv.zeros([1, 5, E]))
    with pytest.raises(qkv.QkvError, match="forms no attention weights; pass need_weights = false"):
        mha(x, x, x)
    with pytest.raises(qkv.QkvError, match="not performer"):
        mha.redraw_features(1)


@pytest.mark.parametrize("variant,causal", CASES)
def test_autograd_layer_matches_its_definition(variant, causal):
    """qkv.nn.MultiheadAttention(variant=...): the same definitions under qkv.autograd."""
    layer = qkv.nn.MultiheadAttention(E, H, batch_first=True, seed=7,
                                      variant=qkv.nn.AttentionVariant(**_variant_kwargs(variant)))
    params, x, ref, go = _definition(variant, causal, layer.state_dict(), seed=12)
    xv = qkv.autograd.Variable(f32(x), True)
    out, _ = layer(xv, xv, xv, is_causal=causal, need_weights=False)
    qkv.autograd.sum(qkv.autograd.mul(out, qkv.autograd.Variable(f32(go)))).backward()
    assert_close_scaled(f64(out.value), ref.detach(), f"{variant} output", rel=2e-5)
    assert_close_scaled(f64(xv.grad), x.grad, f"{variant} d input", rel=1e-4)
    for name, p in layer.named_parameters():
        assert_close_scaled(f64(p.grad), params[name].grad, f"{variant} d {name}", rel=1e-4)


def test_a_transformer_layer_trains_with_a_variant():
    variant = qkv.nn.AttentionVariant(positions="t5", t5_num_buckets=8, t5_max_distance=16)
    layer = qkv.nn.TransformerEncoderLayer(16, 2, dim_feedforward=32, dropout=0.0,
                                           batch_first=True, seed=1, self_attention=variant)
    assert "self_attn.relative_attention_bias.weight" in layer.state_dict()
    table = layer.state_dict()["self_attn.relative_attention_bias.weight"]
    before = f64(table).clone()
    opt = qkv.AdamW(layer.named_parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(3)
    x = qkv.autograd.Variable(f32(torch.randn(4, 6, 16, generator=g)))
    target = qkv.autograd.Variable(f32(torch.randn(4, 6, 16, generator=g)))
    losses = []
    for _ in range(30):
        loss = qkv.autograd.mse_loss(layer(x), target)
        layer.zero_grad()
        loss.backward()
        opt.step(layer.grads())
        losses.append(loss.value.item())
    assert losses[-1] < 0.8 * losses[0]
    assert not torch.equal(f64(table), before)  # the table learned too


def test_autograd_layer_performer_features_redraw():
    layer = qkv.nn.MultiheadAttention(E, H, batch_first=True, variant=qkv.nn.AttentionVariant(
        kernel="performer", performer_features=32))
    x = qkv.autograd.Variable(qkv.from_dlpack(torch.randn(1, 9, E)))
    a = f64(layer(x, x, x, need_weights=False)[0].value)
    layer.redraw_features(5)
    b = f64(layer(x, x, x, need_weights=False)[0].value)
    layer.redraw_features(0)
    assert not torch.equal(a, b) and torch.equal(a, f64(layer(x, x, x, need_weights=False)[0].value))
    with pytest.raises(qkv.QkvError, match="not performer"):
        qkv.nn.MultiheadAttention(E, H).redraw_features(1)
