"""qkv.nn.GPT against a nanoGPT-style torch model written here, in float64.

The reference is karpathy/nanoGPT's model.py (pre-norm blocks, c_attn / c_proj /
c_fc names, GELU tanh, tied wte / lm_head) with GPT-NeoX rotate-half rotary
positions as the alternative to the learned wpe table. Weights are drawn in
torch, rounded to f32 and loaded into both by name. A qkv result (f32) passes
when its largest error against the float64 reference is at most 4x that of the
same torch model run in float32, plus 1e-6 x the reference's largest
magnitude, and never more than 1e-4 x that magnitude.

Sampling: qkv.nn.sampling_distribution against a reference of Hugging Face's
TemperatureLogitsWarper -> TopKLogitsWarper -> TopPLogitsWarper (and against
transformers' own warpers when it is installed): the same surviving tokens and
the same probabilities."""
import math
import threading

import numpy as np
import pytest
import torch

import qkv
from qkv import nn

F = torch.nn.functional


# ---- the torch reference (nanoGPT's model.py) ---------------------------------------------


def rotate_half(x):
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def rotary(x, base, offset=0):
    """x [B, H, T, Dh] rotated as GPT-NeoX: pairs (i, i + Dh / 2), angle pos * base^(-2i / Dh)."""
    t, dh = x.shape[-2], x.shape[-1]
    inv_freq = base ** (-torch.arange(0, dh, 2, dtype=torch.float64) / dh)
    angles = torch.outer(torch.arange(offset, offset + t, dtype=torch.float64), inv_freq)
    cos = torch.cat((angles.cos(), angles.cos()), -1).to(x.dtype)
    sin = torch.cat((angles.sin(), angles.sin()), -1).to(x.dtype)
    return x * cos + rotate_half(x) * sin


class CausalSelfAttention(torch.nn.Module):
    def __init__(self, c):
        super().__init__()
        self.c = c
        self.c_attn = torch.nn.Linear(c["d_model"], 3 * c["d_model"], bias=c["bias"])
        self.c_proj = torch.nn.Linear(c["d_model"], c["d_model"], bias=c["bias"])

    def forward(self, x, weights=None):
        b, t, d = x.shape
        h = self.c["n_head"]
        q, k, v = self.c_attn(x).split(d, dim=2)
        q, k, v = (z.view(b, t, h, d // h).transpose(1, 2) for z in (q, k, v))
        if self.c["positions"] == "rotary":
            q, k = rotary(q, self.c["rotary_base"]), rotary(k, self.c["rotary_base"])
        att = (q @ k.transpose(-2, -1)) / math.sqrt(d // h)
        att = att.masked_fill(torch.ones(t, t, dtype=torch.bool).triu(1), float("-inf")).softmax(-1)
        if weights is not None:
            weights.append(att[0].detach())
        y = (att @ v).transpose(1, 2).contiguous().view(b, t, d)
        return self.c_proj(y)


class MLP(torch.nn.Module):
    def __init__(self, c):
        super().__init__()
        self.c_fc = torch.nn.Linear(c["d_model"], 4 * c["d_model"], bias=c["bias"])
        self.c_proj = torch.nn.Linear(4 * c["d_model"], c["d_model"], bias=c["bias"])

    def forward(self, x):
        return self.c_proj(F.gelu(self.c_fc(x), approximate="tanh"))


class Block(torch.nn.Module):
    def __init__(self, c):
        super().__init__()
        self.ln_1 = torch.nn.LayerNorm(c["d_model"], bias=c["bias"])
        self.attn = CausalSelfAttention(c)
        self.ln_2 = torch.nn.LayerNorm(c["d_model"], bias=c["bias"])
        self.mlp = MLP(c)

    def forward(self, x, weights=None):
        x = x + self.attn(self.ln_1(x), weights)
        return x + self.mlp(self.ln_2(x))


class RefGPT(torch.nn.Module):
    def __init__(self, c):
        super().__init__()
        self.c = c
        parts = dict(wte=torch.nn.Embedding(c["vocab_size"], c["d_model"]))
        if c["positions"] == "learned":
            parts["wpe"] = torch.nn.Embedding(c["context"], c["d_model"])
        parts["h"] = torch.nn.ModuleList(Block(c) for _ in range(c["n_layer"]))
        parts["ln_f"] = torch.nn.LayerNorm(c["d_model"], bias=c["bias"])
        self.transformer = torch.nn.ModuleDict(parts)
        if not c["tied_embeddings"]:
            self.lm_head = torch.nn.Linear(c["d_model"], c["vocab_size"], bias=False)

    def forward(self, idx, weights=None):
        x = self.transformer.wte(idx)
        if "wpe" in self.transformer:
            x = x + self.transformer.wpe(torch.arange(idx.shape[1]))
        for block in self.transformer.h:
            x = block(x, weights)
        x = self.transformer.ln_f(x)
        head = self.lm_head.weight if hasattr(self, "lm_head") else self.transformer.wte.weight
        return x @ head.T

    def loss(self, idx, targets):
        logits = self(idx)
        return F.cross_entropy(logits.view(-1, logits.shape[-1]), targets.view(-1), ignore_index=-1)


CONFIGS = {
    "learned-tied": dict(positions="learned", tied_embeddings=True, bias=True),
    "rotary-untied": dict(positions="rotary", tied_embeddings=False, bias=True),
    "learned-untied-no-bias": dict(positions="learned", tied_embeddings=False, bias=False),
    "rotary-tied": dict(positions="rotary", tied_embeddings=True, bias=True, rotary_base=500.0),
}


def config(name, **over):
    c = dict(vocab_size=13, context=12, n_layer=2, n_head=4, d_model=16, dropout=0.0, bias=True,
             tied_embeddings=True, positions="learned", rotary_base=10000.0)
    c.update(CONFIGS[name])
    c.update(over)
    return c


def models(name, seed=0, **over):
    """(qkv model, float64 reference) with the same f32-rounded random weights."""
    c = config(name, **over)
    ref = RefGPT(c)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in ref.named_parameters():  # off the defaults (LayerNorm ones, zero biases)
            noise = torch.randn(p.shape, generator=g, dtype=torch.float64)
            norm_weight = ".ln_" in n and n.endswith("weight")
            p.copy_(1 + 0.2 * noise if norm_weight else noise * (0.3 if p.dim() == 2 else 0.1))
    ref = ref.float().double()  # the f32-rounded values, in float64
    model = nn.GPT(nn.GPTConfig(**c), seed=seed)
    model.load_state_dict({k: qkv.from_dlpack(v.float().contiguous()) for k, v in ref.state_dict().items()})
    return model, ref


def _t(x):
    return torch.from_dlpack(x).double()


def _parity(got, want64, want32, what, cap=1e-4):
    err = float((got - want64).abs().max())
    scale = max(float(want64.abs().max()), 1e-30)
    err32 = float((want32 - want64).abs().max())
    assert err <= min(4 * err32 + 1e-6 * scale, cap * scale), (
        f"{what}: max error {err:.3e} (torch f32: {err32:.3e}, scale {scale:.3e})")


def batch(c, b, t, seed):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, c["vocab_size"], (b, t), generator=g)
    targets = torch.randint(0, c["vocab_size"], (b, t), generator=g)
    targets[0, 1] = -1  # ignored
    return ids, targets


# ---- names, logits, loss, gradients -------------------------------------------------------


@pytest.mark.parametrize("name", CONFIGS)
def test_parameter_names_are_nanogpts(name):
    c = config(name)
    model = nn.GPT(nn.GPTConfig(**c), seed=1)
    ref = RefGPT(c)
    ours = [(n, tuple(p.value.shape)) for n, p in model.named_parameters()]
    theirs = [(n, tuple(p.shape)) for n, p in ref.named_parameters()]
    assert ours == theirs
    assert ("lm_head.weight" in dict(ours)) == (not c["tied_embeddings"])
    assert model.num_parameters() == sum(p.numel() for p in ref.parameters())


@pytest.mark.parametrize("name", CONFIGS)
def test_logits_loss_and_every_gradient_match_torch(name):
    model, ref = models(name, seed=3)
    c = config(name)
    ids, targets = batch(c, 3, c["context"], seed=4)
    loss = model.loss(qkv.from_dlpack(ids), qkv.from_dlpack(targets))
    loss.backward()
    logits = _t(model(qkv.from_dlpack(ids)).value)

    ref32 = RefGPT(c).float()
    ref32.load_state_dict({k: v.float() for k, v in ref.state_dict().items()})
    want = ref.loss(ids, targets)
    want.backward()
    want32 = ref32.loss(ids, targets)
    want32.backward()
    _parity(logits, ref(ids).detach(), ref32(ids).detach().double(), "logits")
    _parity(_t(loss.value).reshape(()), want.detach(), want32.detach().double(), "loss")
    grads = dict(model.named_parameters())
    named32 = dict(ref32.named_parameters())
    for n, p in ref.named_parameters():
        _parity(_t(grads[n].grad), p.grad, named32[n].grad.double(), f"d loss / d {n}")


@pytest.mark.parametrize("name", ["learned-tied", "rotary-untied"])
def test_attention_maps_match_torch(name):
    model, ref = models(name, seed=5)
    ids, _ = batch(config(name), 1, 9, seed=6)
    maps = model.attention_maps(qkv.from_dlpack(ids))
    weights = []
    ref(ids, weights)
    assert len(maps) == len(weights) == 2
    for got, want in zip(maps, weights):
        assert tuple(got.shape) == (4, 9, 9)
        assert float((_t(got) - want).abs().max()) <= 1e-5


# ---- the KV cache -------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["learned-tied", "rotary-untied"])
def test_kv_cache_matches_the_full_forward(name):
    model, ref = models(name, seed=7)
    model.eval()
    c = config(name)
    ids, _ = batch(c, 2, c["context"], seed=8)
    want = ref(ids).detach()
    full = _t(model(qkv.from_dlpack(ids)).value)
    cache = model.make_cache(batch=2)
    got, start = [], 0
    for n in (4, 1, 1, 2, 1, 1, 1, 1):  # a prompt, then one or two at a time
        got.append(_t(model.forward_cached(qkv.from_dlpack(ids[:, start:start + n].contiguous()), cache)))
        start += n
    assert cache.length == c["context"] == start
    got = torch.cat(got, dim=1)
    scale = float(want.abs().max())
    assert float((got - full).abs().max()) <= 1e-5 * scale
    assert float((got - want).abs().max()) <= 1e-4 * scale
    with pytest.raises(qkv.QkvError, match="capacity"):
        model.forward_cached(qkv.from_dlpack(ids[:, :1].contiguous()), cache)


# ---- generation ---------------------------------------------------------------------------


def test_greedy_generation_matches_a_torch_loop():
    model, ref = models("rotary-tied", seed=9)
    prompt = [1, 5, 2]
    got = model.generate(prompt, max_new_tokens=9, temperature=0.0)
    assert got == model.generate(prompt, max_new_tokens=9, temperature=0.0, use_cache=False)
    seq = list(prompt)
    for _ in range(9):
        logits = ref(torch.tensor([seq]))[0, -1].detach()
        top2 = logits.topk(2).values
        assert float(top2[0] - top2[1]) > 1e-4  # no near-tie that f32 could flip
        seq.append(int(logits.argmax()))
    assert got == seq[len(prompt):]


def test_generate_options_stop_and_streaming():
    model, _ = models("learned-tied", seed=10)
    run = model.generate([3, 4], max_new_tokens=10, temperature=1.0, top_k=5, seed=1)
    assert len(run) == 10 and all(0 <= t < 13 for t in run)
    assert model.generate([3, 4], max_new_tokens=10, temperature=1.0, top_k=5, seed=1) == run
    stop = run[3:5]
    end = next(i + 2 for i in range(9) if run[i:i + 2] == stop)
    assert model.generate([3, 4], max_new_tokens=10, temperature=1.0, top_k=5, seed=1, stop=[stop]) == run[:end]
    seen = []
    out = model.generate([3, 4], max_new_tokens=10, temperature=1.0, top_k=5, seed=1,
                         on_token=lambda t: seen.append(t) or len(seen) < 4)
    assert out == seen == run[:4]
    # The GIL is released: two threads generate at once.
    results = [None, None]

    def work(i):
        results[i] = model.generate([3, 4], max_new_tokens=10, temperature=1.0, top_k=5, seed=1)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [run, run]


@pytest.mark.parametrize("kwargs, match", [
    (dict(prompt=[]), "prompt is empty"),
    (dict(prompt=[1, 13]), "outside"),
    (dict(top_k=-1), "top_k"),
    (dict(top_p=0.0), "top_p"),
    (dict(top_p=1.5), "top_p"),
    (dict(temperature=-1.0), "temperature"),
])
def test_generate_errors(kwargs, match):
    model, _ = models("learned-tied")
    prompt = kwargs.pop("prompt", [1, 2])
    with pytest.raises(qkv.QkvError, match=match):
        model.generate(prompt, max_new_tokens=3, **kwargs)


def test_forward_errors():
    model, _ = models("learned-tied")
    with pytest.raises(qkv.QkvError, match="context"):
        model(qkv.from_numpy(np.zeros((1, 13), dtype=np.int64)))
    with pytest.raises(qkv.QkvError):
        model(qkv.from_numpy(np.full((1, 3), 13, dtype=np.int64)))
    with pytest.raises(qkv.QkvError, match="missing"):
        nn.GPTConfig.from_json('{"vocab_size": 3}')


def test_config_json_round_trip():
    c = nn.GPTConfig(**config("rotary-untied", dropout=0.1))
    back = nn.GPTConfig.from_json(c.to_json())
    assert (back.positions, back.tied_embeddings, back.dropout, back.context) == ("rotary", False, 0.1, 12)


# ---- sampling -----------------------------------------------------------------------------


def hf_warp(scores, temperature, top_k, top_p):
    """Hugging Face's TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper
    (transformers/generation/logits_process.py, min_tokens_to_keep = 1), in
    generate()'s order, on one row of scores; returns the sampling probabilities."""
    scores = scores[None] / temperature
    if top_k > 0:
        k = min(top_k, scores.shape[-1])
        scores = scores.masked_fill(scores < torch.topk(scores, k)[0][..., -1, None], -math.inf)
    if top_p < 1.0:
        sorted_logits, sorted_indices = torch.sort(scores, descending=False)
        cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        remove = cumulative <= (1 - top_p)
        remove[..., -1:] = 0
        remove = remove.scatter(1, sorted_indices, remove)
        scores = scores.masked_fill(remove, -math.inf)
    return scores.softmax(-1)[0]


SAMPLING = [(1.0, 0, 1.0), (0.7, 0, 0.9), (1.3, 10, 1.0), (1.0, 8, 0.5), (0.5, 0, 0.2),
            (2.0, 3, 0.95), (1.0, 0, 0.999), (1.0, 100, 0.6)]


@pytest.mark.parametrize("temperature, top_k, top_p", SAMPLING)
def test_sampling_distribution_matches_hf_warpers(temperature, top_k, top_p):
    for seed in range(5):
        g = torch.Generator().manual_seed(seed)
        logits = (torch.randn(50, generator=g) * 2.5).float()
        got = _t(nn.sampling_distribution(qkv.from_dlpack(logits), temperature=temperature, top_k=top_k,
                                          top_p=top_p))
        want = hf_warp(logits.double(), temperature, top_k, top_p)
        assert torch.equal(got > 0, want > 0), f"seed {seed}: different surviving tokens"
        assert float((got - want).abs().max()) <= 1e-6
        # sample_next_token draws only survivors, reproducibly per seed.
        draws = [nn.sample_next_token(qkv.from_dlpack(logits), temperature=temperature, top_k=top_k,
                                      top_p=top_p, seed=s) for s in range(40)]
        assert all(want[t] > 0 for t in draws)
        assert draws == [nn.sample_next_token(qkv.from_dlpack(logits), temperature=temperature, top_k=top_k,
                                              top_p=top_p, seed=s) for s in range(40)]


def test_sampling_distribution_matches_transformers():
    lp = pytest.importorskip("transformers.generation.logits_process")
    for temperature, top_k, top_p in SAMPLING:
        logits = (torch.randn(64, generator=torch.Generator().manual_seed(11)) * 3).float()
        scores = logits.double()[None]
        for warper in [lp.TemperatureLogitsWarper(temperature)] + (
                [lp.TopKLogitsWarper(top_k)] if top_k else []) + ([lp.TopPLogitsWarper(top_p)] if top_p < 1 else []):
            scores = warper(None, scores)
        want = scores.softmax(-1)[0]
        got = _t(nn.sampling_distribution(qkv.from_dlpack(logits), temperature=temperature, top_k=top_k,
                                          top_p=top_p))
        assert torch.equal(got > 0, want > 0)
        assert float((got - want).abs().max()) <= 1e-6


def test_greedy_and_top_k_one_are_the_argmax():
    logits = torch.tensor([0.1, 2.0, -1.0, 1.9])
    assert nn.sample_next_token(qkv.from_dlpack(logits), temperature=0.0) == 1
    assert all(nn.sample_next_token(qkv.from_dlpack(logits), top_k=1, seed=s) == 1 for s in range(20))
    assert nn.sampling_distribution(qkv.from_dlpack(logits), temperature=0.0).numpy().tolist() == [0, 1, 0, 0]


def test_gpt_from_keyword_arguments():
    a = nn.GPT(**config("rotary-untied"), seed=4)
    b = nn.GPT(nn.GPTConfig(**config("rotary-untied")), seed=4)
    assert a.config.positions == "rotary" and not a.config.tied_embeddings
    sa, sb = a.state_dict(), b.state_dict()
    assert all(np.array_equal(sa[k].numpy(), sb[k].numpy()) for k in sa)  # same seed, same weights
    with pytest.raises(qkv.QkvError, match="not both"):
        nn.GPT(b.config, vocab_size=3)


@pytest.mark.parametrize("name", ["learned-tied", "rotary-untied"])
def test_bf16_autocast_stays_close_to_f32(name):
    """Under qkv.autograd.autocast the projections and the packed attention run on bf16 copies;
    the loss and the gradients stay near the f32 ones (bf16 has 8 bits of mantissa)."""
    model, _ = models(name, seed=12)
    c = config(name)
    ids, targets = (qkv.from_dlpack(t) for t in batch(c, 2, c["context"], seed=13))
    loss32 = model.loss(ids, targets)
    loss32.backward()
    g32 = {n: _t(p.grad).clone() for n, p in model.named_parameters()}
    model.zero_grad()
    with qkv.autograd.autocast():
        loss16 = model.loss(ids, targets)
    loss16.backward()
    assert abs(float(_t(loss16.value)) - float(_t(loss32.value))) <= 2e-2 * abs(float(_t(loss32.value)))
    for n, p in model.named_parameters():
        err = float((_t(p.grad) - g32[n]).abs().max())
        assert err <= 5e-2 * float(g32[n].abs().max()), n
