"""qkv.MultiheadAttention (the one attention layer, qkv.nn.MultiheadAttention)
against torch.nn.MultiheadAttention: same weights, same outputs, weights and
gradients (inputs and every parameter, through qkv.autograd), within f32
tolerance."""
import pytest
import torch

import qkv
from qkv import autograd as ag

CONFIGS = [
    # embed, heads, bias, kdim, vdim, batch_first, self-attention
    (32, 4, True, None, None, True, True),
    (32, 4, True, None, None, False, False),
    (48, 3, False, None, None, True, False),
    (32, 2, True, 24, 40, False, False),
    (64, 8, True, None, None, True, True),
]


def _q(t):
    return qkv.from_dlpack(t.detach().float().contiguous())


def _t(x):
    return torch.from_dlpack(x)


def _v(t, requires_grad=False):
    return ag.Variable(_q(t), requires_grad)


def test_one_multihead_attention():
    assert qkv.MultiheadAttention is qkv.nn.MultiheadAttention


def _pair(config, seed=0):
    e, h, bias, kdim, vdim, batch_first, _ = config
    ours = qkv.MultiheadAttention(e, h, bias=bias, kdim=kdim, vdim=vdim, batch_first=batch_first)
    theirs = torch.nn.MultiheadAttention(e, h, bias=bias, kdim=kdim, vdim=vdim, batch_first=batch_first)
    assert sorted(ours.state_dict()) == sorted(theirs.state_dict()), "parameter names differ"
    ours.load_state_dict({name: _q(t) for name, t in theirs.state_dict().items()})
    return ours, theirs


@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("masks", ["none", "padding+bool", "float+causal"])
def test_forward_and_gradients_match_torch(config, masks):
    e, h, _, kdim, vdim, batch_first, self_attention = config
    ours, theirs = _pair(config)
    g = torch.Generator().manual_seed(1)
    # A causal mask is square in torch.nn.MultiheadAttention: cross-attention then uses Lk = Lq.
    b, lq, lk = 3, 7, 7 if self_attention or masks == "float+causal" else 11
    shape = (lambda l, d: (b, l, d)) if batch_first else (lambda l, d: (l, b, d))
    query = torch.randn(shape(lq, e), generator=g, requires_grad=True)
    if self_attention:
        key = value = query
    else:
        key = torch.randn(shape(lk, kdim or e), generator=g, requires_grad=True)
        value = torch.randn(shape(lk, vdim or e), generator=g, requires_grad=True)
    kwargs, qkw = {}, {}
    if masks == "padding+bool":
        pad = torch.zeros(b, lk, dtype=torch.bool)
        pad[0, -2:] = True
        blocked = torch.zeros(lq, lk, dtype=torch.bool)
        blocked[1, 0] = True
        kwargs = dict(key_padding_mask=pad, attn_mask=blocked)
        qkw = dict(key_padding_mask=qkv.from_dlpack(pad), attn_mask=qkv.from_dlpack(blocked))
    elif masks == "float+causal":
        causal = torch.nn.Transformer.generate_square_subsequent_mask(lq)
        kwargs = dict(attn_mask=causal, is_causal=True)
        qkw = dict(attn_mask=_q(causal), is_causal=True)
    out, weights = theirs(query, key, value, need_weights=True, **kwargs)
    grad = torch.randn(out.shape, generator=g)
    out.backward(grad)
    qv = _v(query, True)
    kv, vv = (qv, qv) if self_attention else (_v(key, True), _v(value, True))
    q_out, q_weights = ours(qv, kv, vv, need_weights=True, **qkw)
    torch.testing.assert_close(_t(q_out.value), out.detach(), rtol=1e-5, atol=2e-6)
    torch.testing.assert_close(_t(q_weights), weights.detach(), rtol=1e-5, atol=2e-6)
    ag.sum(ag.mul(q_out, _v(grad))).backward()
    # Self-attention: the query, key and value uses add up in the one leaf.
    inputs = {"query": (query, qv)} if self_attention else {
        "query": (query, qv), "key": (key, kv), "value": (value, vv)}
    for name, (theirs_input, ours_input) in inputs.items():
        torch.testing.assert_close(_t(ours_input.grad), theirs_input.grad, rtol=1e-4, atol=1e-5)
    params = dict(theirs.named_parameters())
    ours_params = dict(ours.named_parameters())
    assert sorted(ours_params) == sorted(params)
    for name, p in params.items():
        torch.testing.assert_close(_t(ours_params[name].grad), p.grad, rtol=1e-4, atol=1e-5,
                                   msg=lambda m: f"{name}: {m}")


def test_per_head_weights_and_initialisation():
    ours = qkv.MultiheadAttention(32, 4, batch_first=True, seed=3)
    params = {k: _t(v) for k, v in ours.state_dict().items()}
    bound = (6 / (32 + 96)) ** 0.5  # xavier_uniform on in_proj_weight [96, 32]
    assert params["in_proj_weight"].abs().max() <= bound
    assert params["in_proj_weight"].abs().max() > 0.8 * bound
    assert (params["in_proj_bias"] == 0).all() and (params["out_proj.bias"] == 0).all()
    assert params["out_proj.weight"].abs().max() <= 32**-0.5
    x = ag.Variable(qkv.randn([2, 5, 32]))
    _, w = ours(x, x, x, average_attn_weights=False)
    assert tuple(w.shape) == (2, 4, 5, 5)
    torch.testing.assert_close(_t(w).sum(-1), torch.ones(2, 4, 5))


def test_errors():
    ours = qkv.MultiheadAttention(32, 4, batch_first=True)
    with pytest.raises(qkv.QkvError, match="query"):
        ours(*(ag.Variable(qkv.zeros([2, 5, d])) for d in (31, 32, 32)))
    with pytest.raises(qkv.QkvError, match="num_heads"):
        qkv.MultiheadAttention(30, 4)
    with pytest.raises(qkv.QkvError, match="missing keys: out_proj.bias"):
        state = dict(ours.state_dict())
        del state["out_proj.bias"]
        ours.load_state_dict(state)
