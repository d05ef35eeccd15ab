"""qkv.nn against torch.nn: the same weights (copied by name) give the same
outputs and the same gradient for every parameter.

References run in float64 on the f32-rounded weights and inputs. A qkv result
(f32) passes when its largest error is at most 4x that of the same torch model
run in float32, plus 1e-6 x the reference's largest magnitude, and never more
than 1e-5 x that magnitude (outputs) or 2e-5 x (gradients)."""
import copy
import itertools
import math

import pytest
import torch

import qkv
from qkv import autograd as ag
from qkv import nn

F = torch.nn.functional
pytestmark = pytest.mark.filterwarnings("ignore:.*(nested|mismatched key_padding_mask)")


def _q(t):
    return qkv.from_dlpack(t.detach().float().contiguous())


def _t(x):
    return torch.from_dlpack(x).double()


def _v(t, requires_grad=False):
    return ag.Variable(_q(t), requires_grad=requires_grad)


def _err(got, want):
    return float((got - want).abs().max()), max(float(want.abs().max()), 1e-30)


def _close(got, want, what, rel=2e-5):
    err, scale = _err(got, want)
    assert err <= rel * scale, f"{what}: max error {err:.3e} > {rel:.0e} x {scale:.3e}"


def _parity(got, want64, want32, what, cap):
    """got within 4x torch-f32's error + 1e-6 x scale, and within cap x scale."""
    err, scale = _err(got, want64)
    err32, _ = _err(want32, want64)
    assert err <= min(4 * err32 + 1e-6 * scale, cap * scale), (
        f"{what}: max error {err:.3e} (torch f32: {err32:.3e}, scale {scale:.3e})")


def _perturb(model, seed):
    """Moves every parameter off its default (norm weights 1, biases 0) so that a
    swapped or skipped parameter changes the result."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=g) * max(float(p.abs().max()), 0.1))
    return model


def _copy_weights(ours, theirs):
    ours.load_state_dict({name: _q(t) for name, t in theirs.state_dict().items()})


def _run_torch(model, dtype, inputs, kwargs, weight):
    """Forward in `dtype` on a copy, loss sum(out * weight); output and parameter gradients."""
    m = copy.deepcopy(model).to(dtype)
    cast = {k: (v.to(dtype) if torch.is_tensor(v) and v.is_floating_point() else v) for k, v in kwargs.items()}
    out = m(*[x.to(dtype) for x in inputs], **cast)
    (out * weight.to(dtype)).sum().backward()
    return out.detach().double(), {n: p.grad.double() for n, p in m.named_parameters()}


def _run_qkv(model, inputs, kwargs, weight):
    conv = {k: (_q(v) if v.is_floating_point() else qkv.from_dlpack(v)) if torch.is_tensor(v) else v
            for k, v in kwargs.items()}
    out = model(*[_v(x) for x in inputs], **conv)
    ag.sum(ag.mul(out, _v(weight))).backward()
    return _t(out.value), {n: _t(p.grad) for n, p in model.named_parameters()}


def _check_parity(ours, theirs, inputs, kwargs, out_shape, seed=2):
    g = torch.Generator().manual_seed(seed)
    weight = torch.randn(out_shape, generator=g)
    out64, grads64 = _run_torch(theirs, torch.float64, inputs, kwargs, weight)
    out32, grads32 = _run_torch(theirs, torch.float32, inputs, kwargs, weight)
    out, grads = _run_qkv(ours, inputs, kwargs, weight)
    assert list(grads) == list(grads64), "parameter names or order differ from torch"
    _parity(out, out64, out32, "output", 1e-5)
    for name in grads64:
        _parity(grads[name], grads64[name], grads32[name], f"d {name}", 2e-5)


def _randn(shape, g):
    return torch.randn(shape, generator=g).float().double()


# ---- nn.Transformer and nn.TransformerEncoder ------------------------------------


@pytest.mark.parametrize("batch_first,norm_first,activation",
                         list(itertools.product([True, False], [False, True], ["relu", "gelu"])))
def test_transformer_matches_torch(batch_first, norm_first, activation):
    kw = dict(d_model=64, nhead=4, num_encoder_layers=2, num_decoder_layers=2, dim_feedforward=128,
              dropout=0.0, activation=activation, batch_first=batch_first, norm_first=norm_first)
    torch.manual_seed(0)
    theirs = _perturb(torch.nn.Transformer(**kw), 20)
    ours = nn.Transformer(**kw)
    _copy_weights(ours, theirs)
    g = torch.Generator().manual_seed(1)
    b, ls, lt = 3, 9, 7
    shape = (lambda l: (b, l, 64)) if batch_first else (lambda l: (l, b, 64))
    src, tgt = _randn(shape(ls), g), _randn(shape(lt), g)
    src_pad = torch.zeros(b, ls, dtype=torch.bool)
    src_pad[0, -3:] = True
    src_pad[2, -1] = True
    tgt_pad = torch.zeros(b, lt, dtype=torch.bool)
    tgt_pad[1, -2:] = True
    # The causal tgt mask as torch makes it (float -inf above the diagonal), or as bool.
    causal = torch.nn.Transformer.generate_square_subsequent_mask(lt, dtype=torch.float64)
    if not batch_first:
        causal = torch.isinf(causal)
    kwargs = dict(tgt_mask=causal, src_key_padding_mask=src_pad, tgt_key_padding_mask=tgt_pad,
                  memory_key_padding_mask=src_pad, tgt_is_causal=True)
    _check_parity(ours, theirs, [src, tgt], kwargs, shape(lt))


@pytest.mark.parametrize("norm_first", [False, True])
def test_decoder_step_by_step_matches_torch(norm_first):
    """TransformerDecoder.forward_cached over a DecoderCache, a few positions at a
    time, equals torch's decoder on the whole target with the causal mask."""
    kw = dict(d_model=32, nhead=4, dim_feedforward=48, dropout=0.1, batch_first=True,
              norm_first=norm_first)
    torch.manual_seed(0)
    theirs = _perturb(torch.nn.TransformerDecoder(torch.nn.TransformerDecoderLayer(**kw), 2,
                                                  norm=torch.nn.LayerNorm(32)), 21).eval()
    ours = nn.TransformerDecoder(nn.TransformerDecoderLayer(**kw), 2, norm=True)
    _copy_weights(ours, theirs)
    ours.eval()
    g = torch.Generator().manual_seed(2)
    b, ls, lt = 2, 6, 7
    memory, tgt = torch.randn(b, ls, 32, generator=g), torch.randn(b, lt, 32, generator=g)
    pad = torch.zeros(b, ls, dtype=torch.bool)
    pad[1, -2:] = True
    with torch.no_grad():
        want = theirs(tgt, memory, tgt_mask=torch.nn.Transformer.generate_square_subsequent_mask(lt),
                      memory_key_padding_mask=pad, tgt_is_causal=True)
    cache = ours.make_cache(batch=b, capacity=lt)
    got, start = [], 0
    for n in (3, 1, 1, 2):
        step = _v(tgt[:, start:start + n])
        out = ours.forward_cached(step, _v(memory) if start == 0 else None, cache,
                                  memory_key_padding_mask=qkv.from_dlpack(pad))
        got.append(_t(out.value))
        start += n
        assert cache.length == start
    _close(torch.cat(got, 1), want.double(), "step-by-step decoder", rel=1e-5)
    with pytest.raises(qkv.QkvError, match="eval"):
        ours.train()
        ours.forward_cached(_v(tgt[:, :1]), _v(memory), ours.make_cache(batch=b, capacity=lt))


@pytest.mark.parametrize("norm_first", [False, True])
def test_transformer_encoder_matches_torch_with_masks(norm_first):
    layer_kw = dict(d_model=48, nhead=3, dim_feedforward=96, dropout=0.0, activation="gelu",
                    batch_first=True, norm_first=norm_first)
    torch.manual_seed(3)
    theirs = torch.nn.TransformerEncoder(torch.nn.TransformerEncoderLayer(**layer_kw), num_layers=3,
                                         norm=torch.nn.LayerNorm(48), enable_nested_tensor=False)
    _perturb(theirs, 21)
    ours = nn.TransformerEncoder(nn.TransformerEncoderLayer(**layer_kw), num_layers=3, norm=True)
    _copy_weights(ours, theirs)
    g = torch.Generator().manual_seed(4)
    src = _randn((2, 10, 48), g)
    blocked = torch.zeros(10, 10, dtype=torch.bool)
    blocked[:, 7] = True  # no query may see key 7
    blocked[3, 0:3] = True
    pad = torch.zeros(2, 10, dtype=torch.bool)
    pad[1, 6:] = True
    _check_parity(ours, theirs, [src], dict(mask=blocked, src_key_padding_mask=pad), (2, 10, 48))


def test_decoder_layer_float_masks_and_input_gradients():
    kw = dict(d_model=32, nhead=4, dim_feedforward=64, dropout=0.0, batch_first=False)
    torch.manual_seed(5)
    theirs = _perturb(torch.nn.TransformerDecoderLayer(**kw), 22).double()
    ours = nn.TransformerDecoderLayer(**kw)
    _copy_weights(ours, theirs)
    g = torch.Generator().manual_seed(6)
    tgt = _randn((5, 2, 32), g).requires_grad_()
    memory = _randn((8, 2, 32), g).requires_grad_()
    memory_mask = _randn((5, 8), g)  # an additive float bias
    memory_pad = torch.zeros(2, 8)
    memory_pad[0, -2:] = -math.inf  # float key padding
    out = theirs(tgt, memory, memory_mask=memory_mask, memory_key_padding_mask=memory_pad)
    w = torch.randn(out.shape, generator=g).double()
    (out * w).sum().backward()
    t, m = _v(tgt, True), _v(memory, True)
    got = ours(t, m, memory_mask=_q(memory_mask), memory_key_padding_mask=_q(memory_pad))
    ag.sum(ag.mul(got, _v(w))).backward()
    _close(_t(got.value), out.detach(), "output", 1e-5)
    _close(_t(t.grad), tgt.grad, "d tgt")
    _close(_t(m.grad), memory.grad, "d memory")
    for name, p in theirs.named_parameters():
        _close(_t(dict(ours.named_parameters())[name].grad), p.grad, f"d {name}")


# ---- the basic layers ---------------------------------------------------------------


def _layer_parity(ours, theirs, x_shape, seed=7, ids=None):
    _copy_weights(ours, theirs)
    theirs = theirs.double()
    g = torch.Generator().manual_seed(seed)
    x = ids if ids is not None else _randn(x_shape, g).requires_grad_()
    out = theirs(x)
    w = torch.randn(out.shape, generator=g).double()
    (out * w).sum().backward()
    xv = qkv.from_dlpack(x) if ids is not None else _v(x, True)
    got = ours(xv)
    ag.sum(ag.mul(got, _v(w))).backward()
    _close(_t(got.value), out.detach(), "output", 1e-5)
    if ids is None:
        _close(_t(xv.grad), x.grad, "d input")
    params = dict(ours.named_parameters())
    assert list(params) == [n for n, _ in theirs.named_parameters()]
    for name, p in theirs.named_parameters():
        if p.requires_grad:
            _close(_t(params[name].grad), p.grad, f"d {name}")


def test_linear_layernorm_rmsnorm_embedding_match_torch():
    torch.manual_seed(8)
    _layer_parity(nn.Linear(12, 7), torch.nn.Linear(12, 7), (3, 4, 12))
    _layer_parity(nn.Linear(12, 7, bias=False), torch.nn.Linear(12, 7, bias=False), (5, 12))
    ln = torch.nn.LayerNorm(16, eps=1e-6)
    with torch.no_grad():
        ln.weight.normal_()
        ln.bias.normal_()
    _layer_parity(nn.LayerNorm(16, eps=1e-6), ln, (3, 5, 16))
    _layer_parity(nn.LayerNorm(16, bias=False), torch.nn.LayerNorm(16, bias=False), (4, 16))
    rms = torch.nn.RMSNorm(16, eps=1e-6)
    with torch.no_grad():
        rms.weight.normal_()
    _layer_parity(nn.RMSNorm(16, eps=1e-6), rms, (3, 5, 16))
    ids = torch.tensor([[1, 0, 4], [9, 0, 1]])
    _layer_parity(nn.Embedding(10, 6, padding_idx=0), torch.nn.Embedding(10, 6, padding_idx=0), None,
                  ids=ids)


def test_embedding_init_padding_and_from_pretrained():
    e = nn.Embedding(2000, 32, padding_idx=-1, seed=1)
    w = _t(e.weight.value)
    assert (w[-1] == 0).all(), "padding row not zeroed"
    assert abs(float(w[:-1].mean())) < 0.01 and abs(float(w[:-1].std()) - 1) < 0.01
    ids = torch.tensor([[3, 1999, 3]])
    ag.sum(e(qkv.from_dlpack(ids))).backward()
    grad = _t(e.weight.grad)
    assert (grad[1999] == 0).all() and (grad[3] == 2).all()
    table = torch.randn(5, 4)
    frozen = nn.Embedding.from_pretrained(_q(table))
    assert not frozen.weight.requires_grad
    torch.testing.assert_close(_t(frozen(qkv.from_dlpack(torch.tensor([4, 0]))).value),
                               table[[4, 0]].double())
    assert nn.Embedding.from_pretrained(_q(table), freeze=False).weight.requires_grad


class _SwiGLU(torch.nn.Module):
    """Llama's FeedForward, written out."""

    def __init__(self, d, f):
        super().__init__()
        self.w1 = torch.nn.Linear(d, f, bias=False)
        self.w2 = torch.nn.Linear(f, d, bias=False)
        self.w3 = torch.nn.Linear(d, f, bias=False)

    def forward(self, x):
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class _TorchFF(torch.nn.Module):
    """torch's encoder-layer feed-forward: linear2(dropout(act(linear1(x))))."""

    def __init__(self, d, f, act):
        super().__init__()
        self.linear1 = torch.nn.Linear(d, f)
        self.dropout = torch.nn.Dropout(0.0)
        self.linear2 = torch.nn.Linear(f, d)
        self.act = F.gelu if act == "gelu" else F.relu

    def forward(self, x):
        return self.linear2(self.dropout(self.act(self.linear1(x))))


def test_feed_forward_matches_torch():
    torch.manual_seed(9)
    for act in ("relu", "gelu"):
        _layer_parity(nn.FeedForward(24, 40, activation=act), _TorchFF(24, 40, act), (2, 6, 24))
    _layer_parity(nn.FeedForward(24, 40, activation="swiglu", bias=False), _SwiGLU(24, 40), (2, 6, 24))
    assert sorted(nn.FeedForward(8, 16, activation="swiglu", bias=False).state_dict()) == [
        "w1.weight", "w2.weight", "w3.weight"]


@pytest.mark.parametrize("batch_first,kdim", [(True, None), (False, 20)])
def test_multihead_attention_matches_torch(batch_first, kdim):
    torch.manual_seed(10)
    theirs = torch.nn.MultiheadAttention(32, 4, kdim=kdim, vdim=kdim, batch_first=batch_first).double()
    ours = nn.MultiheadAttention(32, 4, kdim=kdim, vdim=kdim, batch_first=batch_first)
    _copy_weights(ours, theirs)
    g = torch.Generator().manual_seed(11)
    b, lq, lk = 2, 5, 6
    shape = (lambda l, d: (b, l, d)) if batch_first else (lambda l, d: (l, b, d))
    q = _randn(shape(lq, 32), g).requires_grad_()
    k = _randn(shape(lk, kdim or 32), g).requires_grad_()
    v = _randn(shape(lk, kdim or 32), g).requires_grad_()
    pad = torch.zeros(b, lk, dtype=torch.bool)
    pad[1, -2:] = True
    blocked = torch.zeros(b * 4, lq, lk, dtype=torch.bool)  # per-head mask
    blocked[5, 0, 1] = True
    out, weights = theirs(q, k, v, key_padding_mask=pad, attn_mask=blocked, need_weights=True,
                          average_attn_weights=False)
    w = torch.randn(out.shape, generator=g).double()
    (out * w).sum().backward()
    qv, kv, vv = _v(q, True), _v(k, True), _v(v, True)
    got, got_weights = ours(qv, kv, vv, key_padding_mask=qkv.from_dlpack(pad),
                            attn_mask=qkv.from_dlpack(blocked), need_weights=True,
                            average_attn_weights=False)
    ag.sum(ag.mul(got, _v(w))).backward()
    _close(_t(got.value), out.detach(), "output", 1e-5)
    _close(_t(got_weights), weights.detach(), "weights", 1e-5)
    for name, t, var in (("query", q, qv), ("key", k, kv), ("value", v, vv)):
        _close(_t(var.grad), t.grad, f"d {name}")
    params = dict(ours.named_parameters())
    assert list(params) == [n for n, _ in theirs.named_parameters()]
    for name, p in theirs.named_parameters():
        _close(_t(params[name].grad), p.grad, f"d {name}")


# ---- names, initialisation, loading -------------------------------------------------


def _names(m):
    return [n for n, _ in m.named_parameters()]


def test_state_dict_names_equal_torch():
    kw = dict(d_model=32, nhead=4, dim_feedforward=64)
    pairs = [
        (nn.Transformer(**kw, num_encoder_layers=2, num_decoder_layers=3),
         torch.nn.Transformer(**kw, num_encoder_layers=2, num_decoder_layers=3)),
        (nn.Transformer(**kw, num_encoder_layers=1, num_decoder_layers=1, bias=False),
         torch.nn.Transformer(**kw, num_encoder_layers=1, num_decoder_layers=1, bias=False)),
        (nn.TransformerEncoderLayer(**kw), torch.nn.TransformerEncoderLayer(**kw)),
        (nn.TransformerDecoderLayer(**kw, bias=False), torch.nn.TransformerDecoderLayer(**kw, bias=False)),
        (nn.TransformerDecoder(nn.TransformerDecoderLayer(**kw), 2, norm=True),
         torch.nn.TransformerDecoder(torch.nn.TransformerDecoderLayer(**kw), 2, norm=torch.nn.LayerNorm(32))),
        (nn.MultiheadAttention(32, 4, kdim=8, vdim=16), torch.nn.MultiheadAttention(32, 4, kdim=8, vdim=16)),
        (nn.MultiheadAttention(32, 4, bias=False), torch.nn.MultiheadAttention(32, 4, bias=False)),
        (nn.LayerNorm(8, elementwise_affine=False), torch.nn.LayerNorm(8, elementwise_affine=False)),
        (nn.RMSNorm(8), torch.nn.RMSNorm(8)),
    ]
    for ours, theirs in pairs:
        assert _names(ours) == _names(theirs), type(theirs).__name__
        assert sorted(ours.state_dict()) == sorted(theirs.state_dict()), type(theirs).__name__
        for name, t in theirs.state_dict().items():
            assert tuple(ours.state_dict()[name].shape) == tuple(t.shape), name
    names = _names(pairs[0][0])
    for expected in ("encoder.layers.0.self_attn.in_proj_weight", "encoder.norm.weight",
                     "decoder.layers.1.multihead_attn.out_proj.bias", "decoder.norm.bias"):
        assert expected in names


def test_initialisation_statistics():
    lin = nn.Linear(256, 512, seed=1)
    w, b = _t(lin.weight.value), _t(lin.bias.value)
    bound = 1 / 16
    assert float(w.abs().max()) <= bound and float(w.abs().max()) > 0.99 * bound
    assert abs(float(w.std()) - bound / math.sqrt(3)) < 0.01 * bound
    assert float(b.abs().max()) <= bound and float(b.std()) > 0.4 * bound

    model = nn.Transformer(d_model=64, nhead=4, num_encoder_layers=2, num_decoder_layers=2,
                           dim_feedforward=128, seed=2)
    p = {n: _t(t) for n, t in model.state_dict().items()}
    for name, t in p.items():
        if t.dim() > 1:  # xavier_uniform_: U(+-sqrt(6 / (fan_in + fan_out)))
            bound = math.sqrt(6 / (t.shape[0] + t.shape[1]))
            assert float(t.abs().max()) <= bound and float(t.abs().max()) > 0.98 * bound, name
            assert abs(float(t.std()) - bound / math.sqrt(3)) < 0.05 * bound, name
    assert (p["encoder.layers.0.self_attn.in_proj_bias"] == 0).all()
    assert (p["decoder.layers.1.multihead_attn.out_proj.bias"] == 0).all()
    assert (p["encoder.norm.weight"] == 1).all() and (p["decoder.layers.0.norm3.bias"] == 0).all()
    lb = p["encoder.layers.1.linear1.bias"]  # Linear's own default survives
    assert float(lb.abs().max()) <= 1 / 8 and float(lb.std()) > 0.03
    assert not torch.equal(p["encoder.layers.0.linear1.weight"], p["encoder.layers.1.linear1.weight"])
    # A layer alone keeps its defaults: out_proj.weight is Linear's U(+-1/sqrt(64)).
    layer = nn.TransformerEncoderLayer(64, 4, 128, seed=3)
    out_proj = _t(layer.state_dict()["self_attn.out_proj.weight"])
    assert float(out_proj.abs().max()) <= 1 / 8 and float(out_proj.abs().max()) > 0.98 / 8


def test_strict_and_non_strict_loading():
    ours = nn.TransformerEncoderLayer(16, 2, 32)
    state = {n: _q(t) for n, t in torch.nn.TransformerEncoderLayer(16, 2, 32).state_dict().items()}
    ours.load_state_dict(state)
    torch.testing.assert_close(_t(ours.state_dict()["linear1.weight"]), _t(state["linear1.weight"]))
    bad = dict(state)
    del bad["norm2.bias"]
    bad["extra.weight"] = qkv.zeros([3])
    bad["linear2.weight"] = qkv.zeros([16, 31])
    with pytest.raises(qkv.QkvError) as info:
        ours.load_state_dict(bad)
    message = str(info.value)
    assert "missing keys: norm2.bias" in message and "unexpected keys: extra.weight" in message
    assert "linear2.weight (checkpoint [16, 31], model [16, 32])" in message
    del bad["linear2.weight"]
    with pytest.raises(qkv.QkvError, match="size mismatch: none"):
        ours.load_state_dict(bad)
    missing, unexpected = ours.load_state_dict(bad, strict=False)
    assert missing == ["linear2.weight", "norm2.bias"] and unexpected == ["extra.weight"]


# ---- dropout and training mode ------------------------------------------------------


def test_dropout_only_in_training_and_reproducible():
    x = ag.Variable(qkv.ones([64, 64]))
    d = nn.Dropout(0.25, seed=5)
    assert d.training
    y = _t(d(x).value)
    kept = y != 0
    assert abs(float(kept.double().mean()) - 0.75) < 0.03
    torch.testing.assert_close(y[kept], torch.full_like(y[kept], 1 / 0.75))
    assert not torch.equal(_t(d(x).value), y), "a second call drew the same mask"
    assert torch.equal(_t(nn.Dropout(0.25, seed=5)(x).value), y), "the seed does not reproduce"
    d.eval()
    assert torch.equal(_t(d(x).value), _t(x.value))

    kw = dict(d_model=32, nhead=4, num_encoder_layers=1, num_decoder_layers=1, dim_feedforward=64,
              dropout=0.3, batch_first=True)
    g = torch.Generator().manual_seed(12)
    src, tgt = _v(torch.randn(2, 6, 32, generator=g)), _v(torch.randn(2, 5, 32, generator=g))
    a, b = nn.Transformer(**kw, seed=9), nn.Transformer(**kw, seed=9)
    ya, yb = _t(a(src, tgt).value), _t(b(src, tgt).value)
    assert torch.equal(ya, yb)
    assert not torch.equal(_t(a(src, tgt).value), ya)
    a.eval()
    assert not a.training
    torch.manual_seed(0)
    theirs = torch.nn.Transformer(**kw).eval()
    _copy_weights(a, theirs)
    with torch.no_grad():
        want = theirs(torch.from_dlpack(src.value), torch.from_dlpack(tgt.value))
    _close(_t(a(src, tgt).value), want.double(), "eval output", 1e-5)
    assert torch.equal(_t(a(src, tgt).value), _t(a(src, tgt).value))


# ---- the attention-pooling classifier ----------------------------------------------


class _TorchPooling(torch.nn.Module):
    def __init__(self, vocab, d, max_len, classes, learned, pe):
        super().__init__()
        self.embedding = torch.nn.Embedding(vocab, d, padding_idx=0)
        if learned:
            self.position_embedding = torch.nn.Embedding(max_len, d)
        self.pe = pe
        self.query = torch.nn.Parameter(torch.randn(d))
        self.classifier = torch.nn.Linear(d, classes)

    def forward(self, ids):
        x = self.embedding(ids)
        positions = torch.arange(ids.shape[1])
        x = x + (self.position_embedding(positions) if self.pe is None else self.pe[: ids.shape[1]])
        scores = (x @ self.query) / math.sqrt(x.shape[-1])
        scores = scores.masked_fill(ids == 0, -math.inf)
        pooled = (torch.softmax(scores, -1).unsqueeze(-1) * x).sum(1)
        return self.classifier(pooled)


@pytest.mark.parametrize("positional", ["sinusoidal", "learned"])
def test_attention_pooling_classifier_matches_torch(positional):
    vocab, d, max_len, classes = 50, 16, 12, 5
    ours = nn.AttentionPoolingClassifier(vocab, d, max_len, classes, positional=positional,
                                         padding_idx=0)
    pe = None
    if positional == "sinusoidal":
        pos = torch.arange(max_len, dtype=torch.float64)[:, None]
        div = torch.pow(10000.0, torch.arange(0, d, 2, dtype=torch.float64) / d)
        pe = torch.zeros(max_len, d, dtype=torch.float64)
        pe[:, 0::2], pe[:, 1::2] = torch.sin(pos / div), torch.cos(pos / div)
    torch.manual_seed(13)
    theirs = _TorchPooling(vocab, d, max_len, classes, positional == "learned", pe)
    assert sorted(ours.state_dict()) == sorted(theirs.state_dict())
    _copy_weights(ours, theirs)
    theirs = theirs.double()
    ids = torch.tensor([[5, 9, 2, 0, 0, 0, 0], [7, 1, 3, 4, 8, 6, 2], [0, 3, 0, 9, 9, 0, 0]])
    targets = torch.tensor([1, 4, 0])
    loss = F.cross_entropy(theirs(ids), targets)
    loss.backward()
    got = ag.cross_entropy(ours(qkv.from_dlpack(ids)), qkv.from_dlpack(targets))
    got.backward()
    assert abs(got.value.item() - loss.item()) <= 1e-5 * max(1.0, loss.item())
    params = dict(ours.named_parameters())
    for name, p in theirs.named_parameters():
        _close(_t(params[name].grad), p.grad, f"d {name}")


# ---- errors --------------------------------------------------------------------------


def test_shape_errors_name_module_argument_and_shapes():
    layer = nn.TransformerEncoderLayer(64, 4, 128, batch_first=True)
    with pytest.raises(qkv.QkvError,
                       match=r"TransformerEncoderLayer: src has shape \[2, 5, 48\]; expected d_model 64"):
        layer(ag.Variable(qkv.zeros([2, 5, 48])))
    with pytest.raises(qkv.QkvError, match=r"MultiheadAttention: attn_mask has shape \[4, 4\]"):
        layer(ag.Variable(qkv.zeros([2, 5, 64])), src_mask=qkv.zeros([4, 4]))
    with pytest.raises(qkv.QkvError, match=r"Linear: input has shape \[3, 5\]; expected in_features 4"):
        nn.Linear(4, 2)(ag.Variable(qkv.zeros([3, 5])))
    model = nn.Transformer(d_model=32, nhead=4, num_encoder_layers=1, num_decoder_layers=1,
                           dim_feedforward=32, batch_first=True)
    with pytest.raises(qkv.QkvError, match=r"Transformer: src \[2, 5, 32\] and tgt \[3, 4, 32\] disagree"):
        model(ag.Variable(qkv.zeros([2, 5, 32])), ag.Variable(qkv.zeros([3, 4, 32])))
    with pytest.raises(qkv.QkvError, match="num_heads"):
        nn.MultiheadAttention(30, 4)
    with pytest.raises(qkv.QkvError, match="activation must be"):
        nn.TransformerEncoderLayer(32, 4, activation="swiglu")
