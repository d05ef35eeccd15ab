"""qkv.autograd against torch.autograd in float64: the same composite graphs (a
Transformer block's ops, losses, shared inputs), every leaf's gradient; plus the
tape's rules (accumulation, no_grad, detach, retain_graph)."""

import pytest
import torch

import qkv
from conftest import assert_close_scaled, f32, f64
from qkv import autograd as ag

F = torch.nn.functional





def _leaves(g, **shapes):
    torch_leaves = {n: torch.randn(s, generator=g, dtype=torch.float64).float().double().requires_grad_()
                    for n, s in shapes.items()}
    qkv_leaves = {n: ag.Variable(f32(t), requires_grad=True) for n, t in torch_leaves.items()}
    return torch_leaves, qkv_leaves


@pytest.mark.parametrize("causal", [False, True])
def test_transformer_block_gradients_match_torch(causal):
    """Pre-norm block: x + W2 gelu(W1 LN(x)) and self-attention, then a classifier loss."""
    g = torch.Generator().manual_seed(0)
    b, l, e, h, f, c = 2, 13, 16, 4, 24, 7
    T, Q = _leaves(g, x=(b, l, e), ln_w=(e,), ln_b=(e,), wqkv=(3 * e, e), w1=(f, e), b1=(f,), w2=(e, f),
                   b2=(e,), wo=(c, e))
    targets = torch.randint(0, c, (b * l,), generator=g)
    targets[3] = -100  # ignored

    def torch_block(p):
        y = F.layer_norm(p["x"], (e,), p["ln_w"], p["ln_b"])
        q, k, v = F.linear(y, p["wqkv"]).view(b, l, 3, h, e // h).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v, is_causal=causal).transpose(1, 2).reshape(b, l, e)
        z = p["x"] + a
        z = z + F.linear(F.gelu(F.linear(F.layer_norm(z, (e,), p["ln_w"], p["ln_b"]), p["w1"], p["b1"])),
                         p["w2"], p["b2"])
        return F.cross_entropy(F.linear(z, p["wo"]).reshape(-1, c), targets, label_smoothing=0.1)

    def qkv_block(p):
        y = ag.layer_norm(p["x"], p["ln_w"], p["ln_b"])
        qkv5 = ag.permute(ag.reshape(ag.linear(y, p["wqkv"]), [b, l, 3, h, e // h]), [2, 0, 3, 1, 4])
        q, k, v = (ag.select(qkv5, 0, i) for i in range(3))
        a = ag.reshape(ag.transpose(ag.attention(q, k, v, causal=causal), 1, 2), [b, l, e])
        z = ag.add(p["x"], a)
        n2 = ag.layer_norm(z, p["ln_w"], p["ln_b"])
        z = ag.add(z, ag.linear(ag.gelu(ag.linear(n2, p["w1"], p["b1"])), p["w2"], p["b2"]))
        logits = ag.reshape(ag.linear(z, p["wo"]), [b * l, c])
        return ag.cross_entropy(logits, qkv.from_dlpack(targets), label_smoothing=0.1)

    ref = torch_block(T)
    ref.backward()
    loss = qkv_block(Q)
    assert abs(loss.value.item() - ref.item()) <= 1e-5 * max(1.0, abs(ref.item()))
    loss.backward()
    for name in T:
        assert_close_scaled(f64(Q[name].grad), T[name].grad, f"d {name}")


def test_losses_softmax_rmsnorm_and_reductions_match_torch():
    g = torch.Generator().manual_seed(1)
    T, Q = _leaves(g, x=(5, 9), w=(9,), y=(5, 9))
    ref = (F.mse_loss(torch.softmax(T["x"], -1) * F.silu(T["y"]), T["y"])
           + F.rms_norm(T["x"], (9,), T["w"], eps=1e-6).mean(0).sum()
           + torch.log_softmax(T["x"], 0).mean() + F.relu(T["y"] - T["x"]).sum(1, keepdim=True).mean())
    ref.backward()
    loss = ag.add(ag.add(ag.mse_loss(ag.mul(ag.softmax(Q["x"]), ag.silu(Q["y"])), Q["y"]),
                         ag.sum(ag.mean(ag.rms_norm(Q["x"], Q["w"], 1e-6), 0))),
                  ag.add(ag.mean(ag.log_softmax(Q["x"], 0)),
                         ag.mean(ag.sum(ag.relu(ag.sub(Q["y"], Q["x"])), 1, keepdim=True))))
    loss.backward()
    for name in T:
        assert_close_scaled(f64(Q[name].grad), T[name].grad, f"d {name}")


def test_embedding_and_broadcasting():
    g = torch.Generator().manual_seed(2)
    T, Q = _leaves(g, table=(11, 6), bias=(6,), gate=(4, 1, 6))
    ids = torch.tensor([[1, 5, 5], [0, 10, 1], [3, 3, 3], [9, 1, 2]])
    ref = ((F.embedding(ids, T["table"], padding_idx=3) + T["bias"]) * T["gate"]).square().sum()
    ref.backward()
    e = ag.add(ag.embedding(Q["table"], qkv.from_dlpack(ids), padding_idx=3), Q["bias"])
    out = ag.mul(e, Q["gate"])
    ag.sum(ag.mul(out, out)).backward()
    for name in T:
        assert_close_scaled(f64(Q[name].grad), T[name].grad, f"d {name}")


def test_tape_rules():
    x = ag.Variable(qkv.from_dlpack(torch.tensor([1.0, 2.0, 3.0])), requires_grad=True)
    y = ag.sum(x * x)
    y.backward(retain_graph=True)
    y.backward()
    assert torch.equal(f64(x.grad), torch.tensor([4.0, 8.0, 12.0], dtype=torch.float64))
    with pytest.raises(qkv.QkvError, match="retain_graph"):
        y.backward()
    with ag.no_grad():
        z = ag.scale(x, 2.0)
    assert not z.requires_grad and ag.grad_enabled()
    d = x.detach()
    assert not d.requires_grad and d.is_leaf
    assert (x * 2.0).grad_fn == "scale"
    with pytest.raises(qkv.QkvError, match="must be a scalar"):
        (x * 2.0).backward()
    x.zero_grad()
    assert x.grad is None


def test_bf16_autocast_keeps_f32_master_weights_and_gradients():
    """Under autocast the products run in bf16 (results within bf16 rounding of
    the f32 run); parameters, their gradients and the loss stay f32."""
    g = torch.Generator().manual_seed(3)
    # Weights at their usual 1/sqrt(fan_in) scale, so the products are well conditioned.
    scales = {"x": 1.0, "w1": 32 ** -0.5, "b1": 0.1, "w2": 64 ** -0.5}
    shapes = {"x": (4, 9, 32), "w1": (64, 32), "b1": (64,), "w2": (5, 64)}
    Q = {n: ag.Variable(f32(torch.randn(shapes[n], generator=g) * scales[n]), requires_grad=True) for n in shapes}
    targets = qkv.from_dlpack(torch.randint(0, 5, (36,), generator=g))

    def run(params):
        h = ag.gelu(ag.linear(params["x"], params["w1"], params["b1"]))
        q = ag.reshape(h, [4, 9, 4, 16])
        a = ag.attention(q, q, q, layout="blhd", causal=True)
        logits = ag.reshape(ag.linear(ag.reshape(a, [4, 9, 64]), params["w2"]), [36, 5])
        return ag.cross_entropy(logits, targets)

    full = run(Q)
    full.backward()
    f32_grads = {n: f64(v.grad) for n, v in Q.items()}
    for v in Q.values():
        v.zero_grad()
    with ag.autocast():
        assert ag.autocast_enabled()
        mixed = run(Q)
    assert not ag.autocast_enabled()
    mixed.backward()
    assert mixed.value.dtype == "f32"
    # Different (the products really ran in bf16), but within bf16 rounding.
    assert mixed.value.item() != full.value.item()
    assert abs(mixed.value.item() - full.value.item()) <= 2e-2 * abs(full.value.item())
    for name, v in Q.items():
        assert v.value.dtype == "f32" and v.grad.dtype == "f32", name
        assert_close_scaled(f64(v.grad), f32_grads[name], f"bf16 d {name}", rel=2e-2)
