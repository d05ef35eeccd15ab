"""Optimizers, schedules and clipping of qkv/optim.h against torch.optim.

Each optimizer runs 20 steps with random gradients beside torch.optim's
single-tensor implementation (foreach=False, what torch uses on the CPU);
parameters must agree to a max relative error of 2.5e-7 in f32 (in practice an
ulp or two for Adam: torch's f32 sqrt is not correctly rounded, qkv's is; SGD
agrees bit for bit).
"""

import math

import numpy as np
import pytest
import torch

import qkv
from conftest import from_torch, to_torch

SHAPES = {"w": (5, 33), "b": (37,), "big": (3000,)}
# About 4 f32 ulps of the parameters' magnitude (observed: under 1 ulp).
MAX_REL = 2.5e-7


def random_params(seed=0):
    g = torch.Generator().manual_seed(seed)
    return {name: torch.randn(shape, generator=g) for name, shape in SHAPES.items()}


def random_grads(step, seed=1):
    g = torch.Generator().manual_seed(seed * 1000 + step)
    grads = {name: torch.randn(shape, generator=g) for name, shape in SHAPES.items()}
    if step % 4 == 3:
        del grads["b"]  # a None grad: torch skips the parameter (its state does not advance)
    return grads


def max_rel_error(got: torch.Tensor, want: torch.Tensor) -> float:
    """max |got - want| relative to the tensor's magnitude max |want|.

    Per-element ratios would blow up where a parameter crosses zero: an ulp
    of difference from an earlier step, at the parameter's scale, divided by
    a value near 0.
    """
    got, want = got.double(), want.double()
    return float((got - want).abs().max() / want.abs().max().clamp_min(1e-30))


class Pair:
    """A qkv optimizer and a torch one over copies of the same parameters."""

    def __init__(self, name, seed=0, **kw):
        init = random_params(seed)
        self.torch_params = {n: p.clone().requires_grad_() for n, p in init.items()}
        self.torch_opt = getattr(torch.optim, name)(list(self.torch_params.values()), foreach=False, **kw)
        self.qkv_params = {n: p.clone() for n, p in init.items()}  # updated in place through DLPack
        self.qkv_opt = getattr(qkv, name)({n: from_torch(p) for n, p in self.qkv_params.items()}, **kw)

    def step(self, step):
        grads = random_grads(step)
        for n, p in self.torch_params.items():
            p.grad = grads[n].clone() if n in grads else None
        self.torch_opt.step()
        self.qkv_opt.step({n: from_torch(g) for n, g in grads.items()})

    def check(self, what):
        for n, p in self.torch_params.items():
            err = max_rel_error(self.qkv_params[n], p.detach())
            assert err <= MAX_REL, f"{what}: parameter {n} max relative error {err:.3e}"


CONFIGS = [
    ("SGD", dict(lr=0.05)),
    ("SGD", dict(lr=0.05, momentum=0.9)),
    ("SGD", dict(lr=0.05, momentum=0.9, dampening=0.3)),
    ("SGD", dict(lr=0.05, momentum=0.8, nesterov=True)),
    ("SGD", dict(lr=0.05, momentum=0.9, weight_decay=0.01)),
    ("SGD", dict(lr=0.05, weight_decay=0.1, maximize=True)),
    ("SGD", dict(lr=0.02, momentum=0.9, nesterov=True, weight_decay=0.05, maximize=True)),
    ("Adam", dict()),
    ("Adam", dict(lr=1e-2, betas=(0.8, 0.95), eps=1e-6)),
    ("Adam", dict(lr=1e-2, weight_decay=0.1)),
    ("Adam", dict(lr=1e-2, amsgrad=True)),
    ("Adam", dict(lr=1e-2, amsgrad=True, weight_decay=0.05, maximize=True)),
    ("AdamW", dict(lr=1e-2)),
    ("AdamW", dict(lr=1e-2, weight_decay=0.1, betas=(0.9, 0.98))),
    ("AdamW", dict(lr=1e-2, amsgrad=True)),
]


@pytest.mark.parametrize("name, kw", CONFIGS, ids=[f"{n}-{kw}" for n, kw in CONFIGS])
def test_matches_torch_after_20_steps(name, kw):
    pair = Pair(name, **kw)
    for step in range(20):
        pair.step(step)
    pair.check(f"{name} {kw}")
    if name == "SGD":  # no sqrt: the same f32 operations give the same bits
        for n, p in pair.torch_params.items():
            assert torch.equal(pair.qkv_params[n], p.detach()), f"SGD {kw}: {n} not bit-identical"
    # The optimizer moved the parameters (the comparison is not vacuous).
    assert max_rel_error(pair.qkv_params["w"], random_params()["w"]) > 1e-3


@pytest.mark.parametrize("name, kw", [CONFIGS[2], CONFIGS[3], CONFIGS[11], CONFIGS[14]], ids=str)
def test_state_dict_round_trip_continues_identically(name, kw):
    pair = Pair(name, **kw)
    for step in range(10):
        pair.step(step)
    state = pair.qkv_opt.state_dict()
    # Through NumPy copies, as a checkpoint would hold them.
    saved = {k: np.array(to_torch(v).numpy(), copy=True) for k, v in state.items()}
    # A fresh optimizer on a copy of the parameters, given the saved state.
    params = {n: p.clone() for n, p in pair.qkv_params.items()}
    resumed = getattr(qkv, name)({n: from_torch(p) for n, p in params.items()}, **kw)
    resumed.load_state_dict({k: qkv.from_numpy(v) for k, v in saved.items()})
    for step in range(10, 20):
        pair.step(step)
        resumed.step({n: from_torch(g) for n, g in random_grads(step).items()})
    for n in SHAPES:
        assert torch.equal(params[n], pair.qkv_params[n]), f"{name}: resumed {n} differs"
    pair.check(f"{name} after round trip")


def test_state_dict_contents():
    pair = Pair("Adam", amsgrad=True)
    assert pair.qkv_opt.state_dict() == {}
    for step in range(4):  # step 3 has no grad for "b"
        pair.step(step)
    state = pair.qkv_opt.state_dict()
    assert set(state) == {f"{n}.{f}" for n in SHAPES for f in ("step", "exp_avg", "exp_avg_sq", "max_exp_avg_sq")}
    assert state["w.step"].item() == 4 and state["b.step"].item() == 3
    for n, p in pair.torch_params.items():
        torch_state = pair.torch_opt.state[p]
        assert float(torch_state["step"]) == state[f"{n}.step"].item()
        assert max_rel_error(to_torch(state[f"{n}.exp_avg"]), torch_state["exp_avg"]) <= MAX_REL
        assert max_rel_error(to_torch(state[f"{n}.exp_avg_sq"]), torch_state["exp_avg_sq"]) <= MAX_REL
    sgd = Pair("SGD", lr=0.1, momentum=0.9)
    sgd.step(0)
    assert set(sgd.qkv_opt.state_dict()) == {f"{n}.momentum_buffer" for n in SHAPES}
    plain = Pair("SGD", lr=0.1)
    plain.step(0)
    assert plain.qkv_opt.state_dict() == {}


def test_load_state_dict_is_strict():
    pair = Pair("Adam")
    pair.step(0)
    state = pair.qkv_opt.state_dict()
    opt = pair.qkv_opt
    with pytest.raises(qkv.QkvError, match="'x.exp_avg' names no parameter"):
        opt.load_state_dict({**state, "x.exp_avg": qkv.zeros([1])})
    with pytest.raises(qkv.QkvError, match="max_exp_avg_sq"):
        opt.load_state_dict({**state, "w.max_exp_avg_sq": qkv.zeros([5, 33])})
    partial = dict(state)
    del partial["b.exp_avg_sq"]
    with pytest.raises(qkv.QkvError, match="'b.exp_avg_sq'"):
        opt.load_state_dict(partial)
    with pytest.raises(qkv.QkvError, match=r"\[33, 5\].*\[5, 33\]"):
        opt.load_state_dict({**state, "w.exp_avg": qkv.zeros([33, 5])})
    # Failed loads leave the state as it was.
    after = opt.state_dict()
    for k in state:
        assert torch.equal(to_torch(after[k]), to_torch(state[k]))


def test_lr_can_change_between_steps():
    pair = Pair("AdamW", lr=1e-2)
    for step in range(8):
        lr = 1e-2 * (0.5 + step / 8)
        pair.qkv_opt.lr = lr
        for group in pair.torch_opt.param_groups:
            group["lr"] = lr
        pair.step(step)
    assert pair.qkv_opt.lr == 1e-2 * (0.5 + 7 / 8)
    pair.check("AdamW with a changing lr")


def test_optimizer_errors():
    w = qkv.zeros([2, 3])
    with pytest.raises(qkv.QkvError, match="nesterov"):
        qkv.SGD({"w": w}, nesterov=True)
    with pytest.raises(qkv.QkvError, match="beta2 is 1"):
        qkv.Adam({"w": w}, betas=(0.9, 1.0))
    with pytest.raises(qkv.QkvError, match="lr is -1"):
        qkv.AdamW({"w": w}, lr=-1.0)
    with pytest.raises(qkv.QkvError, match="bf16"):
        qkv.Adam({"w": qkv.zeros([2], "bf16")})
    opt = qkv.SGD({"w": w}, lr=0.1)
    with pytest.raises(qkv.QkvError, match="'v', which is no parameter"):
        opt.step({"v": qkv.zeros([2, 3])})
    with pytest.raises(qkv.QkvError, match=r"\[3, 2\].*\[2, 3\]"):
        opt.step({"w": qkv.zeros([3, 2])})


def test_numpy_parameters_are_updated_in_place():
    w = np.ones(4, dtype=np.float32)
    opt = qkv.SGD({"w": w}, lr=0.5)
    opt.step({"w": np.full(4, 2.0, dtype=np.float32)})
    assert w.tolist() == [0.0] * 4
    assert opt.params["w"].tolist() == [0.0] * 4


# ---- schedules -----------------------------------------------------------------------------


def lambda_lr_values(lr_lambda, steps, base_lr=0.1):
    p = torch.zeros(1, requires_grad=True)
    opt = torch.optim.SGD([p], lr=base_lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda)
    values = []
    for _ in range(steps):
        values.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return values


def annotated_transformer_rate(step, model_size, factor, warmup):
    # The Annotated Transformer's rate(): Vaswani et al. eq. 3 with step 0 taken as 1.
    if step == 0:
        step = 1
    return factor * (model_size ** (-0.5) * min(step ** (-0.5), step * warmup ** (-1.5)))


def hf_cosine(step, warmup, total, num_cycles=0.5, min_lr_rate=0.0):
    # transformers.optimization._get_cosine_schedule_with_warmup_lr_lambda (with min_lr_rate).
    if step < warmup:
        return float(step) / float(max(1, warmup))
    progress = float(step - warmup) / float(max(1, total - warmup))
    factor = 0.5 * (1.0 + math.cos(math.pi * float(num_cycles) * 2.0 * progress))
    factor = factor * (1 - min_lr_rate) + min_lr_rate
    return max(0, factor)


def hf_linear(step, warmup, total):
    if step < warmup:
        return float(step) / float(max(1, warmup))
    return max(0.0, float(total - step) / float(max(1, total - warmup)))


SCHEDULES = {
    "constant": (lambda s: 1.0, qkv.constant_schedule),
    "transformer": (lambda s: annotated_transformer_rate(s, 512, 2.0, 40),
                    lambda s: qkv.transformer_schedule(s, 512, 40, factor=2.0)),
    "cosine": (lambda s: hf_cosine(s, 10, 100), lambda s: qkv.cosine_schedule_with_warmup(s, 10, 100)),
    "cosine_min": (lambda s: hf_cosine(s, 7, 90, min_lr_rate=0.1),
                   lambda s: qkv.cosine_schedule_with_warmup(s, 7, 90, min_lr_ratio=0.1)),
    "cosine_cycles": (lambda s: hf_cosine(s, 0, 50, num_cycles=1.5),
                      lambda s: qkv.cosine_schedule_with_warmup(s, 0, 50, num_cycles=1.5)),
    "linear": (lambda s: hf_linear(s, 10, 100), lambda s: qkv.linear_schedule_with_warmup(s, 10, 100)),
}


@pytest.mark.parametrize("name", list(SCHEDULES))
def test_schedule_matches_lambda_lr(name):
    reference, ours = SCHEDULES[name]
    want = lambda_lr_values(reference, 120)
    got = lambda_lr_values(ours, 120)
    assert got == pytest.approx(want, rel=1e-15, abs=0.0), name
    assert len(set(got)) > 1 or name == "constant"


def test_transformer_schedule_peaks_at_warmup():
    values = [qkv.transformer_schedule(s, 512, 4000) for s in range(1, 20000, 7)]
    peak = 1 + 7 * int(np.argmax(values))
    assert abs(peak - 4000) <= 7
    assert max(values) == pytest.approx(512**-0.5 * 4000**-0.5, rel=2e-3)  # the grid misses 4000
    assert qkv.transformer_schedule(4000, 512, 4000) == pytest.approx(512**-0.5 * 4000**-0.5, rel=1e-15)


def test_cosine_matches_transformers_if_installed():
    transformers = pytest.importorskip(
        "transformers", reason="transformers is not installed: its cosine schedule is compared by formula above")
    p = torch.zeros(1, requires_grad=True)
    opt = torch.optim.SGD([p], lr=0.1)
    sched = transformers.get_cosine_schedule_with_warmup(opt, 10, 100)
    want = []
    for _ in range(120):
        want.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lambda_lr_values(lambda s: qkv.cosine_schedule_with_warmup(s, 10, 100), 120) == pytest.approx(want, rel=1e-15)


# ---- clipping --------------------------------------------------------------------------------


def clip_pair(values, max_norm, norm_type, **kw):
    torch_grads = [v.clone() for v in values]
    params = [torch.zeros_like(v, requires_grad=True) for v in values]
    for p, g in zip(params, torch_grads):
        p.grad = g
    want = torch.nn.utils.clip_grad_norm_(params, max_norm, norm_type, **kw)
    ours = [v.clone() for v in values]
    got = qkv.clip_grad_norm([from_torch(o) for o in ours], max_norm, norm_type, **kw)
    return got, float(want), ours, [p.grad for p in params]


@pytest.mark.parametrize("norm_type", [2.0, 1.0, 3.0, math.inf])
@pytest.mark.parametrize("max_norm", [0.5, 1e6])
def test_clip_grad_norm_matches_torch(norm_type, max_norm):
    g = torch.Generator().manual_seed(5)
    values = [torch.randn(shape, generator=g) for shape in [(7, 3), (50000,), (1,)]]
    got, want, ours, theirs = clip_pair(values, max_norm, norm_type)
    # torch sums |g|^p in f32; qkv in double: both against the f64 norm.
    exact = float(torch.cat([v.double().flatten() for v in values]).norm(norm_type))
    assert got == pytest.approx(exact, rel=1e-6)
    assert want == pytest.approx(exact, rel=1e-5)
    coef = min(1.0, max_norm / (exact + 1e-6))
    for o, t, v in zip(ours, theirs, values):
        assert max_rel_error(o, v.double() * coef) <= MAX_REL
        assert max_rel_error(o, t) <= 1e-5
        if max_norm == 1e6:
            assert torch.equal(o, v)  # coefficient clamped to 1: unchanged


def test_clip_grad_norm_dict_and_dtypes():
    g = torch.Generator().manual_seed(6)
    a = torch.randn(10, generator=g).to(torch.bfloat16)
    b = torch.randn(10, generator=g)
    ref = torch.cat([a.double(), b.double()]).norm().item()
    total = qkv.clip_grad_norm({"a": from_torch(a), "b": from_torch(b)}, 1.0)
    assert total == pytest.approx(ref, rel=1e-6)
    assert float(torch.cat([a.double(), b.double()]).norm()) == pytest.approx(1.0, rel=1e-2)  # bf16 rounding
    assert qkv.clip_grad_norm([], 1.0) == 0.0


@pytest.mark.parametrize("bad", [math.inf, math.nan])
def test_clip_grad_norm_nonfinite(bad):
    values = [torch.tensor([1.0, 2.0]), torch.tensor([bad, 3.0])]
    got, want, ours, theirs = clip_pair(values, 1.0, 2.0)
    assert (math.isnan(got) and math.isnan(want)) or got == want
    for o, t in zip(ours, theirs):
        assert torch.equal(o, t) or torch.allclose(o, t, equal_nan=True), (o, t)
    kept = [v.clone() for v in values]
    with pytest.raises(qkv.QkvError, match="error_if_nonfinite"):
        qkv.clip_grad_norm([from_torch(k) for k in kept], 1.0, error_if_nonfinite=True)
    with pytest.raises(RuntimeError):
        clip_pair(values, 1.0, 2.0, error_if_nonfinite=True)
    for k, v in zip(kept, values):
        assert torch.equal(k, v) or torch.allclose(k, v, equal_nan=True)
