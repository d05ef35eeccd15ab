"""qkv's FlexAttention-style modifiers (mask_mod= / score_mod=) against torch fp64.

Every modifier is checked against a dense torch reference built from the same
definition: a bool [B, H, Lq, Lk] "may attend" mask and a score function on the
scaled scores, then softmax in fp64 (fully masked rows give 0). Forward outputs
must be within 1e-5 absolute of the reference; gradients (qkv.attention_backward
with the same modifiers) within ~5e-6 relative or the FlashAttention rule (2 x
torch's own f32 error plus a floor), whichever is looser.
"""
from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

import qkv

F = torch.nn.functional

FWD_TOL = 1e-5
GRAD_REL = 5e-6


def _q(t: torch.Tensor) -> qkv.Tensor:
    return qkv.from_dlpack(t.detach().float().contiguous())


def _t(x) -> torch.Tensor:
    return torch.from_dlpack(x).double()


# ---------------------------------------------------------------------------
# Dense references, from the definitions in qkv/modifiers.h.


def _grid(lq, lk):
    return torch.arange(lq)[:, None], torch.arange(lk)[None, :]


def dense_causal(lq, lk, offset=0):
    i, j = _grid(lq, lk)
    return j <= i + offset


def dense_window(lq, lk, left, right):
    i, j = _grid(lq, lk)
    return (j >= i - left) & (j <= i + right)


def dense_prefix(lq, lk, prefix):
    i, j = _grid(lq, lk)
    return (j < prefix) | (j <= i)


def dense_document(ids, lq, lk):
    ids = torch.as_tensor(ids)
    return (ids[:, :lq, None] == ids[:, None, :lk])[:, None]  # [B, 1, Lq, Lk]


def dense_predicate(fn, b, h, lq, lk):
    return torch.tensor([[[[bool(fn(bi, hi, i, j)) for j in range(lk)] for i in range(lq)]
                          for hi in range(h)] for bi in range(b)], dtype=torch.bool)


def packed_ids(lengths_per_batch, length):
    """[B, length] i64 document ids: lengths [3, 5, ...] -> [0,0,0,1,1,1,1,1,...]."""
    rows = []
    for lengths in lengths_per_batch:
        row = np.repeat(np.arange(len(lengths)), lengths)
        assert len(row) == length
        rows.append(row)
    return np.stack(rows).astype(np.int64)


def reference(q, k, v, allowed=None, score_fn=None, float_mask=None, scale=None):
    """Attention in q's dtype with torch ops: s = score_fn(scale q.k) + float_mask,
    hidden pairs -inf, softmax, fully masked rows 0. GQA by repeating k / v."""
    hq, hkv = q.shape[1], k.shape[1]
    if hq != hkv:
        k = k.repeat_interleave(hq // hkv, dim=1)
        v = v.repeat_interleave(hq // hkv, dim=1)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    s = (q @ k.transpose(-2, -1)) * scale
    if score_fn is not None:
        s = score_fn(s)
    if float_mask is not None:
        s = s + float_mask.to(s.dtype)
    if allowed is None:
        allowed = torch.ones(s.shape, dtype=torch.bool)
    allowed = allowed.expand(s.shape)
    live = allowed.any(-1, keepdim=True)
    s = s.masked_fill(~allowed, float("-inf")).masked_fill(~live, 0.0)
    p = torch.softmax(s, dim=-1) * live
    return p @ v


def _inputs(b, hq, hkv, lq, lk, d, seed, qscale=1.0):
    gen = torch.Generator().manual_seed(seed)
    q = (torch.randn(b, hq, lq, d, dtype=torch.float64, generator=gen) * qscale).float().double()
    k = torch.randn(b, hkv, lk, d, dtype=torch.float64, generator=gen).float().double()
    v = torch.randn(b, hkv, lk, d, dtype=torch.float64, generator=gen).float().double()
    go = torch.randn(b, hq, lq, d, dtype=torch.float64, generator=gen).float().double()
    return q, k, v, go


def check(q, k, v, go, *, mask_mod=None, score_mod=None, allowed=None, score_fn=None,
          backward=True, fwd_tol=FWD_TOL, **qkv_kwargs):
    """qkv forward (and backward) with the modifiers against the fp64 reference."""
    float_mask = qkv_kwargs.pop("_float_mask_torch", None)
    out, lse = qkv.attention(_q(q), _q(k), _q(v), mask_mod=mask_mod, score_mod=score_mod,
                             return_lse=True, **qkv_kwargs)
    leaves = [x.detach().clone().requires_grad_() for x in (q, k, v)]
    ref = reference(*leaves, allowed=allowed, score_fn=score_fn, float_mask=float_mask)
    got = _t(out)
    assert torch.isfinite(got).all(), "qkv output has non-finite values"
    err = (got - ref.detach()).abs().max().item()
    assert err <= fwd_tol, f"forward: max error {err:.3e} > {fwd_tol:.1e}"
    if allowed is not None:  # fully masked rows: output 0, lse -inf
        dead = ~allowed.expand(ref.shape[:-1] + (k.shape[2],)).any(-1)
        if dead.any():
            assert (got[dead] == 0).all()
            assert torch.isneginf(_t(lse)[dead]).all()
        assert torch.isfinite(_t(lse)[~dead]).all()
    if not backward:
        return
    ref.backward(go)
    g = qkv.attention_backward(_q(go), _q(q), _q(k), _q(v), output=out, lse=lse,
                               mask_mod=mask_mod, score_mod=score_mod, **qkv_kwargs)
    leaves32 = [x.detach().float().requires_grad_() for x in (q, k, v)]
    fm32 = None if float_mask is None else float_mask.float()
    reference(*leaves32, allowed=allowed, score_fn=score_fn, float_mask=fm32).backward(go.float())
    for name, ref_leaf, torch_leaf in zip("qkv", leaves, leaves32):
        want = ref_leaf.grad
        ours = _t(g[name])
        assert torch.isfinite(ours).all(), f"d{name}: non-finite values"
        err = (ours - want).abs().max().item()
        torch_err = (torch_leaf.grad.double() - want).abs().max().item()
        mag = want.abs().max().item()
        bound = max(GRAD_REL * (1 + mag), 2 * torch_err + 4e-7 * (1 + mag))
        assert err <= bound, f"d{name}: qkv error {err:.3e} > {bound:.3e} (torch f32 {torch_err:.3e})"


# ---------------------------------------------------------------------------
# Masks.


@pytest.mark.parametrize("lq,lk,d", [(130, 130, 32), (70, 130, 64), (130, 57, 32)])
def test_causal_mask_equals_is_causal(lq, lk, d):
    q, k, v, go = _inputs(2, 2, 2, lq, lk, d, seed=lq * 7 + lk)
    # offset 0 is torch's is_causal (top-left) ...
    if lq <= lk:  # (with lq > lk top-left leaves no fully masked rows either; covered below)
        ours = _t(qkv.attention(_q(q), _q(k), _q(v), mask_mod=qkv.causal_mask()))
        theirs = _t(qkv.attention(_q(q), _q(k), _q(v), causal=True))
        assert torch.equal(ours, theirs) or (ours - theirs).abs().max() < 1e-6
        want = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        assert (ours - want).abs().max() < FWD_TOL
    check(q, k, v, go, mask_mod=qkv.causal_mask(), allowed=dense_causal(lq, lk))
    # ... and offset Lk - Lq is the bottom-right alignment.
    off = lk - lq
    check(q, k, v, go, mask_mod=qkv.causal_mask(off), allowed=dense_causal(lq, lk, off))
    ours = _t(qkv.attention(_q(q), _q(k), _q(v), mask_mod=qkv.causal_mask(off)))
    theirs = _t(qkv.attention(_q(q), _q(k), _q(v), causal="bottom_right"))
    assert (ours - theirs).abs().max() < 1e-6


@pytest.mark.parametrize("left,right", [(0, 0), (0, 5), (5, 0), (3, 7), (16, 16), (64, 0), (200, 0),
                                        (0, 200)])
def test_sliding_window(left, right):
    lq = lk = 130
    q, k, v, go = _inputs(2, 2, 2, lq, lk, 32, seed=left * 1000 + right)
    check(q, k, v, go, mask_mod=qkv.sliding_window_mask(left, right),
          allowed=dense_window(lq, lk, left, right))


def test_sliding_window_with_causal_is_intersection():
    lq = lk = 130
    q, k, v, go = _inputs(1, 2, 2, lq, lk, 64, seed=11)
    mm = qkv.sliding_window_mask(9, 9)
    # The causal option and the mask modifier both apply.
    check(q, k, v, go, mask_mod=mm, causal=True,
          allowed=dense_window(lq, lk, 9, 9) & dense_causal(lq, lk))


@pytest.mark.parametrize("prefix", [0, 1, 17, 64, 129, 130, 300])
def test_prefix_lm(prefix):
    lq = lk = 130
    q, k, v, go = _inputs(2, 2, 2, lq, lk, 32, seed=prefix + 5)
    check(q, k, v, go, mask_mod=qkv.prefix_lm_mask(prefix), allowed=dense_prefix(lq, lk, prefix))


DOCS = [[3, 40, 1, 64, 22], [130], [1] * 10 + [120]]


@pytest.mark.parametrize("combine", ["alone", "mask_and", "operator"])
def test_document_mask_packed(combine):
    lq = lk = 130
    ids = packed_ids(DOCS, 130)
    q, k, v, go = _inputs(3, 2, 2, lq, lk, 64, seed=len(combine))
    doc = qkv.document_mask(ids)
    allowed = dense_document(ids, lq, lk)
    if combine == "mask_and":
        mm = qkv.mask_and(doc, qkv.causal_mask())
        allowed = allowed & dense_causal(lq, lk)
    elif combine == "operator":
        mm = qkv.causal_mask() & doc
        allowed = allowed & dense_causal(lq, lk)
    else:
        mm = doc
    check(q, k, v, go, mask_mod=mm, allowed=allowed)


def test_document_mask_i32_unsorted_ids_and_torch_input():
    lq = lk = 77
    gen = torch.Generator().manual_seed(5)
    ids = torch.randint(0, 4, (2, 77), generator=gen, dtype=torch.int32)  # not packed: interleaved
    q, k, v, go = _inputs(2, 2, 2, lq, lk, 32, seed=6)
    mm = qkv.document_mask(qkv.from_dlpack(ids))
    check(q, k, v, go, mask_mod=mm, allowed=dense_document(ids.long(), lq, lk))
    # The mask holds a copy: changing the ids afterwards changes nothing.
    before = ids.clone()
    ids.zero_()
    check(q, k, v, go, mask_mod=mm, allowed=dense_document(before.long(), lq, lk), backward=False)


def test_fully_masked_rows_give_zero_and_no_nan():
    # causal with offset -1: query q sees keys < q. The first query of every document
    # has no earlier key of its own document: a fully masked row.
    lq = lk = 130
    ids = packed_ids(DOCS, 130)
    q, k, v, go = _inputs(3, 2, 2, lq, lk, 32, seed=99)
    mm = qkv.document_mask(ids) & qkv.causal_mask(-1)
    allowed = dense_document(ids, lq, lk) & dense_causal(lq, lk, -1)
    dead = ~allowed.any(-1)
    assert dead.sum() > 10  # rows 0, 3, 43, ... of each batch
    check(q, k, v, go, mask_mod=mm, allowed=allowed)
    out, lse = qkv.attention(_q(q), _q(k), _q(v), mask_mod=mm, return_lse=True)
    g = qkv.attention_backward(_q(go), _q(q), _q(k), _q(v), output=out, lse=lse, mask_mod=mm)
    dq = _t(g["q"])
    assert not dq.isnan().any()
    assert (dq[dead.expand(3, 2, lq)] == 0).all()
    # Everything hidden: all zeros, lse -inf, zero gradients.
    nothing = qkv.causal_mask(-1000)
    out, lse = qkv.attention(_q(q), _q(k), _q(v), mask_mod=nothing, return_lse=True)
    assert (_t(out) == 0).all() and torch.isneginf(_t(lse)).all()
    g = qkv.attention_backward(_q(go), _q(q), _q(k), _q(v), output=out, lse=lse, mask_mod=nothing)
    for name in "qkv":
        assert (_t(g[name]) == 0).all(), name


def test_mask_or_window_and_custom_predicate():
    # Local window plus "global" tokens (every 16th key), per head: head 1 also sees key 0.
    lq = lk = 130
    b, h = 1, 2

    def pred(bi, hi, i, j):
        return j % 16 == 0 or (hi == 1 and j == 0)

    q, k, v, go = _inputs(b, h, h, lq, lk, 32, seed=21)
    allowed = dense_window(lq, lk, 4, 4) | dense_predicate(pred, b, h, lq, lk)
    check(q, k, v, go, mask_mod=qkv.mask_or(qkv.sliding_window_mask(4, 4), qkv.custom_mask(pred)),
          allowed=allowed)
    check(q, k, v, go, mask_mod=qkv.sliding_window_mask(4, 4) | qkv.custom_mask(pred),
          allowed=allowed, backward=False)


def test_custom_mask_threads_gqa_and_blhd():
    # A per-head custom mask evaluated on several threads, grouped-query heads, 'blhd' layout.
    qkv.set_num_threads(4)
    b, hq, hkv, lq, lk, d = 2, 4, 2, 33, 65, 32

    def pred(bi, hi, i, j):
        return np.bool_((i + j + hi + bi) % 3 != 0)  # NumPy bools are fine (truthiness)

    q, k, v, go = _inputs(b, hq, hkv, lq, lk, d, seed=8)
    allowed = dense_predicate(pred, b, hq, lq, lk)
    ref = reference(q, k, v, allowed=allowed)
    tr = lambda x: _q(x.transpose(1, 2))  # noqa: E731
    out = qkv.attention(tr(q), tr(k), tr(v), layout="blhd", mask_mod=qkv.custom_mask(pred))
    assert (_t(out).transpose(1, 2) - ref).abs().max() < FWD_TOL
    check(q, k, v, go, mask_mod=qkv.custom_mask(pred), allowed=allowed)


def test_custom_mask_with_other_masks_and_reference_path():
    lq, lk = 40, 56
    q, k, v, go = _inputs(2, 3, 3, lq, lk, 32, seed=4)
    pad = torch.zeros(2, lk, dtype=torch.bool)
    pad[1, 40:] = True
    bias = torch.randn(3, lq, lk, generator=torch.Generator().manual_seed(1)).float()
    mm = qkv.prefix_lm_mask(8)
    allowed = dense_prefix(lq, lk, 8) & ~pad[:, None, None, :]
    kw = dict(mask=qkv.from_dlpack(bias), key_padding_mask=qkv.from_dlpack(pad))
    check(q, k, v, go, mask_mod=mm, allowed=allowed, _float_mask_torch=bias.double(), **kw)
    fused = _t(qkv.attention(_q(q), _q(k), _q(v), mask_mod=mm, **kw))
    oracle = _t(qkv.attention(_q(q), _q(k), _q(v), mask_mod=mm, reference=True, **kw))
    assert (fused - oracle).abs().max() < FWD_TOL


# ---------------------------------------------------------------------------
# Scores.


def _softcap(cap):
    return lambda s: cap * torch.tanh(s / cap)


def _alibi_torch(slopes, lq, lk):
    i, j = _grid(lq, lk)
    return lambda s: s - torch.tensor(slopes, dtype=s.dtype)[:, None, None] * (i - j).abs().to(s.dtype)


def _alibi_qkv(slopes):
    return qkv.bias_score(lambda b, h, i, j: -slopes[h] * abs(i - j))


@pytest.mark.parametrize("cap", [1.0, 5.0, 30.0])
def test_softcap(cap):
    lq = lk = 130
    q, k, v, go = _inputs(2, 2, 2, lq, lk, 64, seed=int(cap), qscale=4.0)  # scores of size ~4
    check(q, k, v, go, score_mod=qkv.softcap_score(cap), score_fn=_softcap(cap))
    check(q, k, v, go, score_mod=qkv.softcap_score(cap), score_fn=_softcap(cap),
          mask_mod=qkv.causal_mask(), allowed=dense_causal(lq, lk))


def test_softcap_before_float_mask():
    # Order: s = softcap(scale q.k) + mask; the float mask is not capped.
    lq, lk = 30, 45
    q, k, v, go = _inputs(1, 2, 2, lq, lk, 32, seed=3, qscale=3.0)
    bias = (torch.randn(lq, lk, generator=torch.Generator().manual_seed(2)) * 4).float()
    check(q, k, v, go, score_mod=qkv.softcap_score(2.0), score_fn=_softcap(2.0),
          mask=qkv.from_dlpack(bias), _float_mask_torch=bias.double())


def test_bias_score_alibi():
    lq, lk = 130, 130
    slopes = [0.5, 0.0625]
    q, k, v, go = _inputs(1, 2, 2, lq, lk, 32, seed=17)
    check(q, k, v, go, score_mod=_alibi_qkv(slopes), score_fn=_alibi_torch(slopes, lq, lk))
    check(q, k, v, go, score_mod=_alibi_qkv(slopes), score_fn=_alibi_torch(slopes, lq, lk),
          mask_mod=qkv.causal_mask(), allowed=dense_causal(lq, lk))


@pytest.mark.parametrize("order", ["bias_then_cap", "cap_then_bias", "cap_cap"])
def test_score_chain(order):
    lq, lk = 97, 130
    slopes = [0.25, 0.125]
    q, k, v, go = _inputs(1, 2, 2, lq, lk, 64, seed=len(order), qscale=3.0)
    alibi_q, alibi_t = _alibi_qkv(slopes), _alibi_torch(slopes, lq, lk)
    cap_q, cap_t = qkv.softcap_score(3.0), _softcap(3.0)
    if order == "bias_then_cap":
        sm, fn = qkv.score_chain(alibi_q, cap_q), lambda s: cap_t(alibi_t(s))
    elif order == "cap_then_bias":
        sm, fn = qkv.score_chain(cap_q, alibi_q), lambda s: alibi_t(cap_t(s))
    else:
        sm, fn = qkv.score_chain(cap_q, qkv.softcap_score(1.5)), lambda s: _softcap(1.5)(cap_t(s))
    off = lk - lq
    check(q, k, v, go, score_mod=sm, score_fn=fn, mask_mod=qkv.causal_mask(off) & qkv.sliding_window_mask(40, 0),
          allowed=dense_causal(lq, lk, off) & dense_window(lq, lk, 40, 0))


def test_score_mod_helpers():
    assert qkv.softcap_score(2.0).score(100.0, 0, 0, 0, 0) == pytest.approx(2.0)
    sm = qkv.score_chain(qkv.bias_score(lambda b, h, i, j: torch.tensor(1.5)), qkv.softcap_score(10.0))
    assert sm.score(0.5, 0, 0, 3, 4) == pytest.approx(10 * np.tanh(0.2), rel=1e-6)
    m = qkv.sliding_window_mask(2, 1) & qkv.causal_mask()
    assert [m.allowed(0, 0, 5, j) for j in range(8)] == [False, False, False, True, True, True, False, False]
    assert isinstance(m, qkv.MaskMod) and isinstance(sm, qkv.ScoreMod)


# ---------------------------------------------------------------------------
# Errors.


def test_errors():
    with pytest.raises(qkv.QkvError, match="sliding_window_mask"):
        qkv.sliding_window_mask(-1, 0)
    with pytest.raises(qkv.QkvError, match="sliding_window_mask"):
        qkv.sliding_window_mask(2, -3)
    with pytest.raises(qkv.QkvError, match="prefix_lm_mask"):
        qkv.prefix_lm_mask(-1)
    with pytest.raises(qkv.QkvError, match=r"document_ids must be \[B, L\]"):
        qkv.document_mask(np.zeros(5, dtype=np.int64))
    with pytest.raises(qkv.QkvError, match=r"document_ids must be \[B, L\]"):
        qkv.document_mask(np.zeros((1, 2, 5), dtype=np.int64))
    with pytest.raises(qkv.QkvError, match="i32 or i64"):
        qkv.document_mask(np.zeros((1, 5), dtype=np.float32))
    for cap in (0.0, -1.0, float("inf")):
        with pytest.raises(qkv.QkvError, match="softcap_score"):
            qkv.softcap_score(cap)
    x = _q(torch.randn(1, 1, 4, 8))
    with pytest.raises(TypeError):
        qkv.attention(x, x, x, mask_mod=qkv.softcap_score(1.0))
    with pytest.raises(TypeError):
        qkv.attention(x, x, x, score_mod=qkv.causal_mask())
    with pytest.raises(TypeError):
        qkv.causal_mask() & 1
    with pytest.raises(TypeError):
        qkv.custom_mask(3)


def test_python_exceptions_propagate():
    qkv.set_num_threads(2)
    x = _q(torch.randn(1, 2, 40, 16))

    def boom(b, h, i, j):
        raise ZeroDivisionError("boom")

    with pytest.raises(ZeroDivisionError, match="boom"):
        qkv.attention(x, x, x, mask_mod=qkv.custom_mask(boom))
    with pytest.raises(ZeroDivisionError, match="boom"):
        qkv.attention(x, x, x, score_mod=qkv.bias_score(boom))
    with pytest.raises(TypeError):
        qkv.attention(x, x, x, score_mod=qkv.bias_score(lambda b, h, i, j: "not a float"))
    # Still usable afterwards.
    out = qkv.attention(x, x, x, mask_mod=qkv.custom_mask(lambda b, h, i, j: j <= i))
    assert torch.isfinite(_t(out)).all()


_SHORT_IDS = textwrap.dedent("""
    import numpy as np, qkv
    x = qkv.from_numpy(np.zeros((2, 1, 64, 16), np.float32))
    for ids in (np.zeros((2, 10), np.int64), np.zeros((1, 64), np.int64)):
        try:
            qkv.attention(x, x, x, mask_mod=qkv.document_mask(ids))
        except qkv.QkvError:
            continue
        print("NO ERROR", ids.shape)
""")


def test_document_ids_shorter_than_sequence_raise():
    # In a subprocess, so that a regression (an out-of-bounds read) cannot take pytest down.
    r = subprocess.run([sys.executable, "-c", _SHORT_IDS], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "NO ERROR" not in r.stdout, (r.returncode, r.stdout, r.stderr[-500:])
