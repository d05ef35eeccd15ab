"""qkv.attention (the fused forward) against torch's scaled_dot_product_attention.

The error rule is the FlashAttention one: an fp64 reference is computed on the
same (for bf16: the bf16-rounded) input values; qkv's max abs error against it
may be at most FACTOR x the error of torch's SDPA in the input dtype, plus a
floor of a few units of that dtype's epsilon times the output's magnitude.
qkv always returns f32 (it accumulates in f32 even for bf16 inputs), so for
bf16 inputs it is also held to the f32 rule: within FACTOR x torch's f32 SDPA
error on the same upcast values.

Masks follow torch's conventions; the fp64 reference builds them explicitly
(bottom-right causal: query i sees key j iff j <= i + Lk - Lq; key padding:
True = padding). A query row with every key hidden is where the libraries
differ: torch's math backend gives NaN (its CPU flash kernel, in torch 2.13,
gives 0), qkv gives 0 and a log-sum-exp of -inf; such rows are checked for
qkv's semantics and left out of the torch comparison.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import qkv
from conftest import EPSILON, FACTOR, FLOOR_ULPS, TORCH_DTYPE, random_input, to_torch

# ---- helpers ----------------------------------------------------------------------------


def qt(x: torch.Tensor) -> qkv.Tensor:
    """A qkv tensor over x's memory (zero-copy; strides kept)."""
    t = qkv.from_dlpack(x)
    if x.numel():
        assert torch.from_dlpack(t).data_ptr() == x.data_ptr(), "from_dlpack copied"
    return t


def visibility(B, Hq, Lq, Lk, *, causal=False, mask=None, key_padding_mask=None) -> torch.Tensor:
    """Bool [B, Hq, Lq, Lk]: True where query i may see key j (before any float bias)."""
    allowed = torch.ones(B, Hq, Lq, Lk, dtype=torch.bool)
    i = torch.arange(Lq).unsqueeze(1)
    j = torch.arange(Lk).unsqueeze(0)
    if causal in (True, "top_left"):
        allowed = allowed & (j <= i)
    elif causal == "bottom_right":
        allowed = allowed & (j <= i + (Lk - Lq))
    if mask is not None and mask.dtype == torch.bool:
        allowed = allowed & mask
    if key_padding_mask is not None:
        allowed = allowed & ~key_padding_mask[:, None, None, :]
    return allowed


def reference64(q, k, v, *, scale=None, causal=False, mask=None, key_padding_mask=None):
    """(out, lse, visible) in fp64 from the [B, H, L, D] inputs' values.

    Explicit math: softmax(scale q k^T + bias, hidden keys -inf) v, with GQA by
    repeating k / v heads. Rows with no visible key get out 0 and lse -inf.
    """
    B, Hq, Lq, D = q.shape
    Hkv, Lk = k.shape[1], k.shape[2]
    q64, k64, v64 = q.double(), k.double(), v.double()
    if Hkv != Hq:
        k64 = k64.repeat_interleave(Hq // Hkv, dim=1)
        v64 = v64.repeat_interleave(Hq // Hkv, dim=1)
    s = scale if scale is not None else 1.0 / math.sqrt(D)
    scores = (q64 @ k64.transpose(-2, -1)) * s
    if mask is not None and mask.dtype != torch.bool:
        scores = scores + mask.double()
    allowed = visibility(B, Hq, Lq, Lk, causal=causal, mask=mask, key_padding_mask=key_padding_mask)
    scores = scores.masked_fill(~allowed, -math.inf)
    lse = torch.logsumexp(scores, dim=-1)  # -inf on rows with nothing visible
    visible = torch.isfinite(lse)
    p = torch.exp(scores - torch.where(visible, lse, 0.0).unsqueeze(-1))
    p = torch.where(visible.unsqueeze(-1), p, 0.0)
    return p @ v64, lse, visible


def torch_sdpa(q, k, v, *, scale=None, causal=False, mask=None, key_padding_mask=None, dtype=None):
    """torch's own SDPA in `dtype` (default: the inputs'), masks in torch's form."""
    if dtype is not None:
        q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
    B, Hq, Lq, _ = q.shape
    Lk = k.shape[2]
    gqa = k.shape[1] != Hq
    if causal in (True, "top_left") and mask is None and key_padding_mask is None:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale, enable_gqa=gqa)
    attn_mask = None
    if causal or key_padding_mask is not None or (mask is not None and mask.dtype == torch.bool):
        attn_mask = visibility(B, Hq, Lq, Lk, causal=causal, mask=mask, key_padding_mask=key_padding_mask)
    if mask is not None and mask.dtype != torch.bool:
        bias = mask.to(q.dtype)
        attn_mask = bias if attn_mask is None else bias.masked_fill(~attn_mask, -math.inf)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, scale=scale, enable_gqa=gqa)


def max_abs(x: torch.Tensor) -> float:
    return float(x.abs().max()) if x.numel() else 0.0


def check_rule(got, ref, theirs, dtype: str, rows, what: str):
    """max|got - ref| <= FACTOR * max|theirs - ref| + FLOOR_ULPS * eps * max|ref| over `rows`."""
    got, ref, theirs = got.double(), ref.double(), theirs.double()
    rows = rows.unsqueeze(-1).expand_as(ref)
    if not rows.any():
        return
    assert torch.isfinite(theirs[rows]).all(), f"{what}: torch gave non-finite values on visible rows"
    err_qkv = max_abs(got[rows] - ref[rows])
    err_torch = max_abs(theirs[rows] - ref[rows])
    bound = FACTOR * err_torch + FLOOR_ULPS[dtype] * EPSILON[dtype] * max(max_abs(ref[rows]), 1.0)
    assert err_qkv <= bound, (
        f"{what} [{dtype}]: qkv error {err_qkv:.3e} > bound {bound:.3e} (torch {dtype} error {err_torch:.3e})"
    )


def run_and_check(q, k, v, dtype: str, *, layout="bhld", scale=None, causal=False, mask=None,
                  key_padding_mask=None, what="attention", check_lse=False):
    """Runs qkv.attention on torch tensors q, k, v (in `layout`) and checks it.

    Returns (qkv out as a [B, H, L, D] f64 torch tensor, reference out, visible rows).
    """
    out_q = qkv.attention(qt(q), qt(k), qt(v), scale=scale, causal=causal,
                          mask=None if mask is None else qt(mask),
                          key_padding_mask=None if key_padding_mask is None else qt(key_padding_mask),
                          layout=layout, return_lse=check_lse)
    lse_q = None
    if check_lse:
        out_q, lse_q = out_q
    assert out_q.dtype == "f32"
    if layout == "blhd":  # the reference works on [B, H, L, D] views of the same values
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
    B, Hq, Lq, _ = q.shape
    Dv = v.shape[-1]
    got = to_torch(out_q)
    want_shape = (B, Hq, Lq, Dv) if layout == "bhld" else (B, Lq, Hq, Dv)
    assert tuple(got.shape) == want_shape, f"{what}: shape {tuple(got.shape)} != {want_shape}"
    if layout == "blhd":
        got = got.transpose(1, 2)
    got = got.double()
    kw = dict(scale=scale, causal=causal, mask=mask, key_padding_mask=key_padding_mask)
    ref, lse_ref, visible = reference64(q, k, v, **kw)
    assert torch.isfinite(got).all(), f"{what}: qkv output has non-finite values"
    # Fully masked rows: exactly 0 (torch would give NaN).
    hidden = ~visible
    if hidden.any():
        assert (got[hidden] == 0).all(), f"{what}: a fully masked row is not 0"
    theirs = torch_sdpa(q, k, v, **kw)
    check_rule(got, ref, theirs, dtype, visible, what)
    if dtype == "bf16":  # qkv computes in f32: hold it to the f32 rule as well
        theirs32 = torch_sdpa(q, k, v, dtype=torch.float32, **kw)
        check_rule(got, ref, theirs32, "f32", visible, what + " (f32 rule)")
    if check_lse:
        check_lse_values(to_torch(lse_q), lse_ref, q, k, v, what=what, **kw)
    return got, ref, visible


def check_lse_values(lse, lse_ref, q, k, v, *, what, scale=None, **kw):
    """qkv's log-sum-exp against the fp64 one: -inf exactly where nothing is visible,
    else within FACTOR x torch's f32 flash kernel's lse error (+ a floor of a few
    f32 epsilons of the scores' magnitude)."""
    assert lse.dtype == torch.float32 and tuple(lse.shape) == tuple(lse_ref.shape), what
    visible = torch.isfinite(lse_ref)
    assert (lse[~visible] == -math.inf).all(), f"{what}: lse of a fully masked row is not -inf"
    assert torch.isfinite(lse[visible]).all(), f"{what}: lse not finite on a visible row"
    if not visible.any():
        return
    err_qkv = max_abs(lse.double()[visible] - lse_ref[visible])
    # torch's lse (the private op behind SDPA's CPU flash kernel; needs equal heads
    # and a float mask); when it cannot run, only the floor applies.
    err_torch = 0.0
    try:
        B, Hq = q.shape[:2]
        kk = k.float().repeat_interleave(Hq // k.shape[1], 1)
        vv = v.float().repeat_interleave(Hq // v.shape[1], 1)
        allowed = visibility(B, Hq, q.shape[2], k.shape[2], causal=kw.get("causal", False),
                             mask=kw.get("mask"), key_padding_mask=kw.get("key_padding_mask"))
        bias = torch.zeros(allowed.shape)
        if kw.get("mask") is not None and kw["mask"].dtype != torch.bool:
            bias = bias + kw["mask"].float()
        bias = bias.masked_fill(~allowed, -math.inf)
        _, lse_t = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
            q.float(), kk, vv, 0.0, False, attn_mask=bias, scale=scale)[:2]
        lse_t = lse_t.double()
        if torch.isfinite(lse_t[visible]).all():
            err_torch = max_abs(lse_t[visible] - lse_ref[visible])
    except (RuntimeError, TypeError):
        pass
    bound = FACTOR * err_torch + 16 * EPSILON["f32"] * max(max_abs(lse_ref[visible]), 1.0)
    assert err_qkv <= bound, f"{what}: lse error {err_qkv:.3e} > bound {bound:.3e} (torch {err_torch:.3e})"


def inputs(B, Hq, Hkv, Lq, Lk, D, dtype, *, Dv=None, seed=0, scale=1.0):
    q = random_input((B, Hq, Lq, D), dtype, seed=seed, scale=scale)
    k = random_input((B, Hkv, Lk, D), dtype, seed=seed + 1, scale=scale)
    v = random_input((B, Hkv, Lk, Dv or D), dtype, seed=seed + 2, scale=1.0)
    return q, k, v


# ---- shapes, head dims, dtypes ----------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["f32", "bf16"])
@pytest.mark.parametrize("D", [16, 32, 64, 80, 128, 256])
@pytest.mark.parametrize("Lq, Lk", [(1, 1), (1, 203), (113, 203), (203, 113), (64, 64), (256, 256)], ids=str)
def test_shapes(Lq, Lk, D, dtype):
    B, H = (1, 2) if Lq * Lk * D > 64 * 64 * 128 else (2, 3)
    q, k, v = inputs(B, H, H, Lq, Lk, D, dtype, seed=D + Lq)
    run_and_check(q, k, v, dtype, what=f"shape Lq={Lq} Lk={Lk} D={D}")


@pytest.mark.parametrize("dtype", ["f32", "bf16"])
@pytest.mark.parametrize("D, Dv", [(64, 32), (32, 80), (128, 16)], ids=str)
def test_value_dim_differs(D, Dv, dtype):
    q, k, v = inputs(2, 2, 2, 37, 91, D, dtype, Dv=Dv, seed=3)
    run_and_check(q, k, v, dtype, causal="bottom_right", what=f"D={D} Dv={Dv}", check_lse=True)


@pytest.mark.parametrize("dtype", ["f32", "bf16"])
def test_custom_scale(dtype):
    q, k, v = inputs(1, 2, 2, 50, 70, 32, dtype, seed=4)
    run_and_check(q, k, v, dtype, scale=0.37, what="scale=0.37", check_lse=True)
    run_and_check(q, k, v, dtype, scale=1.0, causal=True, what="scale=1 causal", check_lse=True)


def test_zero_lengths():
    # Lq = 0: empty output (torch allows it too).
    q, k, v = inputs(1, 2, 2, 0, 5, 16, "f32")
    out, lse = qkv.attention(qt(q), qt(k), qt(v), return_lse=True)
    assert out.shape == (1, 2, 0, 16) == tuple(F.scaled_dot_product_attention(q, k, v).shape)
    assert lse.shape == (1, 2, 0)
    # Lk = 0: every row sees nothing: 0 (torch's CPU kernel agrees) and lse -inf.
    q, k, v = inputs(2, 2, 1, 3, 0, 16, "f32")
    out, lse = qkv.attention(qt(q), qt(k), qt(v), return_lse=True)
    assert out.shape == (2, 2, 3, 16) and (to_torch(out) == 0).all()
    assert (to_torch(lse) == -math.inf).all()
    assert (F.scaled_dot_product_attention(q, k, v, enable_gqa=True) == 0).all()
    # B = 0 and blhd with Lq = 0.
    q, k, v = inputs(0, 2, 2, 4, 5, 16, "bf16")
    assert qkv.attention(qt(q), qt(k), qt(v)).shape == (0, 2, 4, 16)
    q = random_input((1, 0, 4, 8), "f32")  # [B, Lq=0, H=4, D]: layout blhd
    k = v = random_input((1, 5, 2, 8), "f32")
    assert qkv.attention(qt(q), qt(k), qt(v), layout="blhd").shape == (1, 0, 4, 8)


# ---- grouped-query / multi-query ------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["f32", "bf16"])
@pytest.mark.parametrize("causal", [False, True, "bottom_right"])
@pytest.mark.parametrize("Hkv", [1, 2, 4, 8])
def test_gqa(Hkv, causal, dtype):
    q, k, v = inputs(2, 8, Hkv, 77, 130, 64, dtype, seed=Hkv)
    run_and_check(q, k, v, dtype, causal=causal, what=f"gqa Hkv={Hkv} causal={causal}", check_lse=True)


def test_gqa_blhd_with_mask():
    B, Hq, Hkv, Lq, Lk, D = 2, 8, 2, 33, 65, 32
    q = random_input((B, Lq, Hq, D), "f32", seed=1, scale=1.0)
    k = random_input((B, Lk, Hkv, D), "f32", seed=2, scale=1.0)
    v = random_input((B, Lk, Hkv, D), "f32", seed=3, scale=1.0)
    g = torch.Generator().manual_seed(4)
    mask = torch.randn(B, Hq, Lq, Lk, generator=g)  # per query head bias
    kpm = torch.rand(B, Lk, generator=g) < 0.3
    run_and_check(q, k, v, "f32", layout="blhd", mask=mask, key_padding_mask=kpm,
                  what="gqa blhd bias+kpm", check_lse=True)


# ---- masks ------------------------------------------------------------------------------------

MASKS = ["none", "causal", "top_left", "bottom_right", "bool_bcast_heads", "bool_bcast_batch",
         "bool_2d", "bias", "bias_bcast", "bias_neg_inf", "key_padding", "key_padding_causal",
         "bool_and_key_padding", "bias_and_bottom_right"]


def make_mask(kind, B, H, Lq, Lk, seed=0):
    """(causal, mask, key_padding_mask) for one kind of mask."""
    g = torch.Generator().manual_seed(seed)
    causal, mask, kpm = False, None, None
    if kind in ("causal", "top_left", "bottom_right"):
        causal = True if kind == "causal" else kind
    if kind == "bool_bcast_heads":
        mask = torch.rand(B, 1, Lq, Lk, generator=g) < 0.7
    if kind == "bool_bcast_batch":
        mask = torch.rand(1, H, Lq, Lk, generator=g) < 0.7
    if kind in ("bool_2d", "bool_and_key_padding"):
        mask = torch.rand(Lq, Lk, generator=g) < 0.6
    if kind in ("bias", "bias_and_bottom_right"):
        mask = torch.randn(B, H, Lq, Lk, generator=g) * 2
    if kind == "bias_bcast":
        mask = torch.randn(1, 1, Lq, Lk, generator=g) * 2
    if kind == "bias_neg_inf":  # additive -inf hides keys (ALiBi-style bias with holes)
        mask = torch.randn(B, 1, Lq, Lk, generator=g)
        mask = mask.masked_fill(torch.rand(B, 1, Lq, Lk, generator=g) < 0.4, -math.inf)
    if kind in ("key_padding", "key_padding_causal", "bool_and_key_padding"):
        lengths = torch.randint(1, Lk + 1, (B,), generator=g) if Lk else torch.zeros(B, dtype=torch.long)
        kpm = torch.arange(Lk).unsqueeze(0) >= lengths.unsqueeze(1)
        kpm[0, Lk // 2 + 1 :] = True  # batch 0: about half padded
    if kind == "key_padding_causal":
        causal = True
    if kind == "bias_and_bottom_right":
        causal = "bottom_right"
    return causal, mask, kpm


@pytest.mark.parametrize("dtype", ["f32", "bf16"])
@pytest.mark.parametrize("Lq, Lk", [(113, 203), (203, 113), (1, 203), (64, 64)], ids=str)
@pytest.mark.parametrize("kind", MASKS)
def test_masks(kind, Lq, Lk, dtype):
    B, H, D = 2, 3, 32
    q, k, v = inputs(B, H, H, Lq, Lk, D, dtype, seed=Lq + Lk)
    causal, mask, kpm = make_mask(kind, B, H, Lq, Lk, seed=Lq)
    run_and_check(q, k, v, dtype, causal=causal, mask=mask, key_padding_mask=kpm,
                  what=f"mask {kind} Lq={Lq} Lk={Lk}", check_lse=(dtype == "f32"))


def test_bias_dtypes():
    """A float bias in bf16 or f16 means the same as its values (qkv reads it in f32)."""
    q, k, v = inputs(1, 2, 2, 20, 30, 16, "f32", seed=5)
    g = torch.Generator().manual_seed(6)
    for bias in (torch.randn(1, 2, 20, 30, generator=g).bfloat16(), torch.randn(20, 30, generator=g).half()):
        run_and_check(q, k, v, "f32", mask=bias.float(), what=f"bias {bias.dtype} (as f32)")
        a = to_torch(qkv.attention(qt(q), qt(k), qt(v), mask=qt(bias)))
        b = to_torch(qkv.attention(qt(q), qt(k), qt(v), mask=qt(bias.float())))
        torch.testing.assert_close(a, b, rtol=0, atol=0)


# ---- decode: one or a few queries (grouped-query tiles, rows read in place) -------------------


@pytest.mark.parametrize("dtype", ["f32", "bf16"])
@pytest.mark.parametrize("causal", [False, True, "bottom_right"])
@pytest.mark.parametrize("Hkv", [1, 2, 4])
def test_decode_grouped_heads(Hkv, causal, dtype):
    """One query with grouped K/V heads (the query heads of a group share one tile)."""
    B, Hq, D = 2, 8, 64
    for Lk, padding in ((1, False), (130, True), (700, True)):
        q, k, v = inputs(B, Hq, Hkv, 1, Lk, D, dtype, seed=Lk + Hkv)
        kpm = None
        if padding:
            kpm = torch.zeros(B, Lk, dtype=torch.bool)
            kpm[0, Lk // 3 :] = True
            kpm[1, :5] = True
        run_and_check(q, k, v, dtype, causal=causal, key_padding_mask=kpm, check_lse=True,
                      what=f"decode Hkv={Hkv} Lk={Lk} causal={causal}")
    # blhd layout (the head stride is the row stride of the group's tile).
    q = random_input((B, 1, Hq, D), dtype, seed=5, scale=1.0)
    k = random_input((B, 257, Hkv, D), dtype, seed=6, scale=1.0)
    v = random_input((B, 257, Hkv, D), dtype, seed=7, scale=1.0)
    run_and_check(q, k, v, dtype, causal=causal, layout="blhd", check_lse=True, what="decode blhd")
    # All keys of batch 1 padded: 0 and -inf for every head of the group.
    kpm = torch.zeros(B, 257, dtype=torch.bool)
    kpm[1] = True
    run_and_check(q, k, v, dtype, layout="blhd", key_padding_mask=kpm, check_lse=True, what="decode all padded")


@pytest.mark.parametrize("dtype", ["f32", "bf16"])
@pytest.mark.parametrize("Lq", [1, 2, 3, 4, 5])
@pytest.mark.parametrize("kind", ["none", "bottom_right", "top_left", "bool_bcast_heads", "bias_neg_inf",
                                  "key_padding_causal"])
def test_decode_few_queries(kind, Lq, dtype):
    B, Hq, Hkv, Lk, D = 2, 4, 2, 203, 80
    q, k, v = inputs(B, Hq, Hkv, Lq, Lk, D, dtype, seed=Lq)
    causal, mask, kpm = make_mask(kind, B, Hq, Lq, Lk, seed=Lq + 1)
    run_and_check(q, k, v, dtype, causal=causal, mask=mask, key_padding_mask=kpm, check_lse=True,
                  what=f"few queries {kind} Lq={Lq}")


@pytest.mark.parametrize("dtype", ["f32", "bf16"])
@pytest.mark.parametrize("Lq, Lk", [(1, 1024), (3, 3001), (64, 2048), (65, 1500)], ids=str)
@pytest.mark.parametrize("kind", ["none", "bottom_right", "key_padding", "bias_neg_inf"])
def test_long_keys_few_tasks(kind, Lq, Lk, dtype):
    """Fewer (batch, head, tile) tasks than threads and a long Lk: the keys are
    split across threads and the partial softmaxes merged."""
    qkv.set_num_threads(2)
    q, k, v = inputs(1, 1, 1, Lq, Lk, 64, dtype, seed=Lk)
    causal, mask, kpm = make_mask(kind, 1, 1, Lq, Lk, seed=Lq)
    if kind == "key_padding":  # whole key chunks padded, and a gap in the middle
        kpm = torch.zeros(1, Lk, dtype=torch.bool)
        kpm[0, : Lk // 2] = True
        kpm[0, Lk - 70 :] = True
    run_and_check(q, k, v, dtype, causal=causal, mask=mask, key_padding_mask=kpm, check_lse=True,
                  what=f"long keys {kind} Lq={Lq} Lk={Lk}")
    # Every key hidden: 0 and -inf, merged from all-empty parts.
    out, lse = qkv.attention(qt(q), qt(k), qt(v), key_padding_mask=qt(torch.ones(1, Lk, dtype=torch.bool)),
                             return_lse=True)
    assert (to_torch(out) == 0).all() and (to_torch(lse) == -math.inf).all()


# ---- layouts and strides -----------------------------------------------------------------------

VIEWS = ["contiguous", "sliced_length", "sliced_dim", "transposed", "expanded_batch", "head_dim_strided"]


def make_view(kind, B, H, L, D, dtype, seed, layout):
    """A [B, H, L, D] (bhld) or [B, L, H, D] (blhd) tensor that is a view of the `kind`."""
    shape = (B, H, L, D) if layout == "bhld" else (B, L, H, D)
    ldim = 2 if layout == "bhld" else 1
    if kind == "contiguous":
        return random_input(shape, dtype, seed=seed, scale=1.0)
    if kind == "sliced_length":  # every other position of a longer sequence
        big = list(shape)
        big[ldim] = 2 * L + 1
        return random_input(tuple(big), dtype, seed=seed, scale=1.0)[(slice(None),) * ldim + (slice(1, None, 2),)]
    if kind == "sliced_dim":  # a head inside a wider projection: D of 3 * D + 8 columns
        big = shape[:-1] + (3 * D + 8,)
        return random_input(big, dtype, seed=seed, scale=1.0)[..., D + 3 : 2 * D + 3]
    if kind == "transposed":  # the other layout's memory, viewed as this one
        other = (B, L, H, D) if layout == "bhld" else (B, H, L, D)
        return random_input(other, dtype, seed=seed, scale=1.0).transpose(1, 2)
    if kind == "expanded_batch":  # one batch row shared by all (stride 0)
        return random_input((1,) + shape[1:], dtype, seed=seed, scale=1.0).expand(shape)
    if kind == "head_dim_strided":  # D not contiguous (qkv may copy this one)
        return random_input(shape[:-1] + (2 * D,), dtype, seed=seed, scale=1.0)[..., ::2]
    raise AssertionError(kind)


@pytest.mark.parametrize("dtype", ["f32", "bf16"])
@pytest.mark.parametrize("view", VIEWS)
@pytest.mark.parametrize("layout", ["bhld", "blhd"])
def test_layouts_and_views(layout, view, dtype):
    B, Hq, Hkv, Lq, Lk, D = 2, 4, 2, 45, 71, 48
    q = make_view(view, B, Hq, Lq, D, dtype, 1, layout)
    k = make_view(view, B, Hkv, Lk, D, dtype, 2, layout)
    v = make_view("contiguous" if view == "expanded_batch" else view, B, Hkv, Lk, D, dtype, 3, layout)
    if view != "contiguous":
        assert not q.is_contiguous()
    causal, mask, kpm = make_mask("bool_and_key_padding", B, Hq, Lq, Lk, seed=7)
    run_and_check(q, k, v, dtype, layout=layout, what=f"{layout} {view}")
    run_and_check(q, k, v, dtype, layout=layout, causal="bottom_right", mask=mask, key_padding_mask=kpm,
                  what=f"{layout} {view} masked", check_lse=True)


def test_blhd_equals_bhld():
    """The same values in either layout give the same numbers, bit for bit."""
    q, k, v = inputs(2, 4, 2, 65, 129, 64, "f32", seed=9)
    a = to_torch(qkv.attention(qt(q), qt(k), qt(v), causal=True))
    qb, kb, vb = (x.transpose(1, 2).contiguous() for x in (q, k, v))
    b = to_torch(qkv.attention(qt(qb), qt(kb), qt(vb), causal=True, layout="blhd"))
    assert b.shape == (2, 65, 4, 64)
    torch.testing.assert_close(b.transpose(1, 2), a, rtol=0, atol=0)


def test_mask_views():
    """Masks are read through their strides too: a transposed bool mask, a sliced bias."""
    B, H, Lq, Lk, D = 2, 2, 40, 56, 32
    q, k, v = inputs(B, H, H, Lq, Lk, D, "f32", seed=11)
    g = torch.Generator().manual_seed(12)
    mask = (torch.rand(B, H, Lk, Lq, generator=g) < 0.7).transpose(-2, -1)
    run_and_check(q, k, v, "f32", mask=mask, what="transposed bool mask")
    bias = torch.randn(B, 1, Lq, 2 * Lk, generator=g)[..., ::2]
    run_and_check(q, k, v, "f32", mask=bias, what="strided bias")
    kpm = (torch.rand(Lk, B, generator=g) < 0.3).t()
    run_and_check(q, k, v, "f32", key_padding_mask=kpm, what="transposed key_padding_mask")


# ---- log-sum-exp, fully masked rows, extreme logits --------------------------------------------


@pytest.mark.parametrize("dtype", ["f32", "bf16"])
def test_fully_masked_rows(dtype):
    B, H, Lq, Lk, D = 2, 2, 70, 90, 32
    q, k, v = inputs(B, H, H, Lq, Lk, D, dtype, seed=13)
    # Bool mask with some rows all False (one of them in a tile of its own).
    mask = torch.rand(B, H, Lq, Lk, generator=torch.Generator().manual_seed(1)) < 0.5
    mask[0, 0, 3] = False
    mask[1, :, 65:] = False
    _, _, visible = run_and_check(q, k, v, dtype, mask=mask, what="bool rows", check_lse=True)
    assert not visible[0, 0, 3] and not visible[1, 1, 69]
    # Every key of batch 1 is padding.
    kpm = torch.zeros(B, Lk, dtype=torch.bool)
    kpm[1] = True
    out, lse = qkv.attention(qt(q), qt(k), qt(v), key_padding_mask=qt(kpm), return_lse=True)
    out, lse = to_torch(out), to_torch(lse)
    assert (out[1] == 0).all() and (lse[1] == -math.inf).all() and not out.isnan().any()
    run_and_check(q, k, v, dtype, key_padding_mask=kpm, what="all-padding batch", check_lse=True)
    # Bottom-right causal with Lq > Lk: the first Lq - Lk queries see nothing.
    q2, k2, v2 = inputs(B, H, H, 90, 30, D, dtype, seed=14)
    got, _, visible = run_and_check(q2, k2, v2, dtype, causal="bottom_right", what="br Lq>Lk", check_lse=True)
    assert (~visible[:, :, :60]).all() and visible[:, :, 60:].all()
    # A -inf bias on a whole row.
    bias = torch.zeros(B, 1, Lq, Lk)
    bias[:, :, 10] = -math.inf
    run_and_check(q, k, v, dtype, mask=bias, what="-inf bias row", check_lse=True)


@pytest.mark.parametrize("dtype", ["f32", "bf16"])
@pytest.mark.parametrize("causal", [False, "bottom_right"])
def test_return_lse(causal, dtype):
    q, k, v = inputs(2, 4, 2, 97, 150, 64, dtype, seed=15, scale=2.0)
    run_and_check(q, k, v, dtype, causal=causal, what="lse", check_lse=True)


@pytest.mark.parametrize("dtype", ["f32", "bf16"])
@pytest.mark.parametrize("magnitude", [1e4, -1e4])
def test_extreme_logits(magnitude, dtype):
    """Scores of about +-1e4 (differing by a few units within a row): the online
    softmax must neither overflow nor lose the row. The inputs are small integers
    and the scale a power of two, so every score is exact in f32 (and bf16
    inputs are exact): the comparison with torch is then well conditioned."""
    B, H, Lq, Lk, D = 1, 2, 50, 150, 64
    g = torch.Generator().manual_seed(16)
    base = torch.randint(30, 101, (B, H, 1, D), generator=g) * (torch.randint(0, 2, (B, H, 1, D), generator=g) * 2 - 1)
    q = torch.randint(1, 4, (B, H, Lq, D), generator=g) * base.sign()
    delta = torch.zeros(B, H, Lk, D, dtype=torch.long)  # one +-1 entry per key
    delta.scatter_(-1, torch.randint(0, D, (B, H, Lk, 1), generator=g),
                   torch.randint(0, 2, (B, H, Lk, 1), generator=g) * 2 - 1)
    k = base * int(math.copysign(1, magnitude)) + delta
    v = random_input((B, H, Lk, D), dtype, seed=17, scale=1.0)
    q, k = q.to(TORCH_DTYPE[dtype]), k.to(TORCH_DTYPE[dtype])
    s = (q.double() @ k.double().transpose(-2, -1)) * 2.0
    assert 0.5 * abs(magnitude) < float(s.abs().min()) and float(s.abs().max()) < 4 * abs(magnitude)
    got, _, _ = run_and_check(q, k, v, dtype, scale=2.0, what=f"logits {magnitude:g}", check_lse=True)
    assert torch.isfinite(got).all()


@pytest.mark.parametrize("dtype", ["f32", "bf16"])
@pytest.mark.parametrize("magnitude", [1e4, -1e4])
def test_extreme_logits_random(magnitude, dtype):
    """Random scores of +-1e4: no inf / NaN, and the error within what rounding the
    scores to f32 makes unavoidable (|s| eps sqrt(D) |v|) or FACTOR x torch's f32
    error. (Here a single sample of either library's error is noise at the level
    of that bound, so FACTOR x torch alone would be a coin toss.)"""
    B, H, Lq, Lk, D = 1, 2, 50, 150, 64
    q, k, v = inputs(B, H, H, Lq, Lk, D, dtype, seed=16)
    k = (q[:, :, :1].float().expand(B, H, Lk, D) * math.copysign(1.0, magnitude) + 0.01 * k.float()).to(q.dtype)
    scale = abs(magnitude) / float((q[:, :, :1].double() ** 2).sum(-1).max())
    out, lse = qkv.attention(qt(q), qt(k), qt(v), scale=scale, return_lse=True)
    got, lse = to_torch(out).double(), to_torch(lse).double()
    ref, lse_ref, _ = reference64(q, k, v, scale=scale)
    assert torch.isfinite(got).all() and torch.isfinite(lse).all()
    s_max = float(((q.double() @ k.double().transpose(-2, -1)) * scale).abs().max())
    assert s_max > 0.5 * abs(magnitude)
    err_torch = max_abs(torch_sdpa(q, k, v, scale=scale, dtype=torch.float32).double() - ref)
    bound = max(FACTOR * err_torch, EPSILON["f32"] * s_max * math.sqrt(D) * max_abs(v.double()))
    assert max_abs(got - ref) <= bound
    assert max_abs(lse - lse_ref) <= 4 * EPSILON["f32"] * s_max * math.sqrt(D)


def test_large_bias_values():
    q, k, v = inputs(1, 2, 2, 30, 80, 32, "f32", seed=17)
    g = torch.Generator().manual_seed(18)
    bias = torch.randn(1, 2, 30, 80, generator=g) * 1e4
    run_and_check(q, k, v, "f32", mask=bias, what="bias 1e4", check_lse=True)
    bias = torch.full((1, 1, 30, 80), -3e38)  # finite, near -FLT_MAX: uniform weights
    run_and_check(q, k, v, "f32", mask=bias, what="bias -3e38", check_lse=True)


# ---- the oracle, threads ----------------------------------------------------------------------


def test_reference_oracle():
    q, k, v = inputs(2, 4, 2, 41, 67, 32, "bf16", seed=19)
    causal, mask, kpm = make_mask("bool_and_key_padding", 2, 4, 41, 67, seed=20)
    out, lse = qkv.attention(qt(q), qt(k), qt(v), causal="bottom_right", mask=qt(mask),
                             key_padding_mask=qt(kpm), return_lse=True, reference=True)
    ref, lse_ref, visible = reference64(q, k, v, causal="bottom_right", mask=mask, key_padding_mask=kpm)
    # The oracle accumulates in double; only the f32 rounding of its output remains.
    torch.testing.assert_close(to_torch(out).double(), ref, rtol=2**-22, atol=1e-7)
    lse_t = to_torch(lse).double()
    assert (lse_t[~visible] == -math.inf).all()
    torch.testing.assert_close(lse_t[visible], lse_ref[visible], rtol=2**-22, atol=1e-6)


def test_threads_give_identical_results():
    q, k, v = inputs(2, 6, 3, 200, 230, 64, "f32", seed=21)
    outs = []
    for n in (1, 2):
        qkv.set_num_threads(n)
        outs.append(to_torch(qkv.attention(qt(q), qt(k), qt(v), causal="bottom_right")).clone())
    torch.testing.assert_close(outs[0], outs[1], rtol=0, atol=0)


# ---- errors ----------------------------------------------------------------------------------


def _raises(match, q, k, v, **kw):
    with pytest.raises(qkv.QkvError, match=match):
        qkv.attention(q, k, v, **kw)


def test_errors_name_the_argument():
    t = lambda *shape, dtype=torch.float32: qt(torch.zeros(shape, dtype=dtype))  # noqa: E731
    q, k, v = t(2, 8, 5, 16), t(2, 2, 7, 16), t(2, 2, 7, 16)
    _raises(r"argument q has shape \[2, 8, 16\]", t(2, 8, 16), k, v)
    _raises(r"argument k has shape", q, t(2, 2, 7, 16, 1), v)
    _raises(r"argument v has shape", q, k, t(7, 16))
    _raises(r"heads are not a multiple", q, t(2, 3, 7, 16), t(2, 3, 7, 16))
    _raises(r"same batch size", q, t(1, 2, 7, 16), t(1, 2, 7, 16))
    _raises(r"same head dim", q, t(2, 2, 7, 8), v)
    _raises(r"k and v must have the same heads and length", q, k, t(2, 2, 6, 16))
    _raises(r"share a dtype; got f32, bf16 and f32", q, t(2, 2, 7, 16, dtype=torch.bfloat16), v)
    _raises(r"argument q has dtype f16", t(2, 8, 5, 16, dtype=torch.float16), k, v)
    _raises(r"argument mask has shape \[3, 7\]", q, k, v, mask=t(3, 7, dtype=torch.bool))
    _raises(r"argument mask has shape", q, k, v, mask=t(2, 8, 5, 7, 1))
    _raises(r"argument mask has dtype i32", q, k, v, mask=t(5, 7, dtype=torch.int32))
    _raises(r"argument key_padding_mask has shape \[2, 5\]", q, k, v, key_padding_mask=t(2, 5, dtype=torch.bool))
    _raises(r"argument key_padding_mask has dtype", q, k, v, key_padding_mask=t(2, 7))
    _raises(r"layout must be 'bhld' or 'blhd', got 'bshd'", q, k, v, layout="bshd")
    _raises(r"causal must be", q, k, v, causal="diagonal")
    _raises(r"scale must be finite", q, k, v, scale=math.inf)
    # blhd reads [B, L, H, D]: the same tensors now disagree on heads vs length.
    _raises(r"\[B, L, H, D\]", q, k, v, layout="blhd")
    # The oracle validates the same way.
    _raises(r"heads are not a multiple", q, t(2, 3, 7, 16), t(2, 3, 7, 16), reference=True)
