"""The sparse attention masks (qkv.dilated_window_mask, sparse_fixed_mask,
sparse_strided_mask, block_sparse_mask, bigbird_mask, longformer_mask).

Each pattern is compared, via qkv.mask_to_tensor, with a NumPy transcription of
its definition (the papers' formulas; BigBird's random blocks with the draw
documented in qkv/sparse_masks.h). qkv.attention with the mask_mod is then held
to conftest's rule against torch's scaled_dot_product_attention in float64 with
the explicit bool mask: its error at most FACTOR x torch's own error in the
input dtype plus FLOOR_ULPS epsilons of the magnitude (bf16 inputs: also the
f32 rule, qkv computing in f32), for the output and the gradients of q, k, v.
For gradients the magnitude is at least 1 (their terms are O(1): a gradient
cancelling to 0 keeps their f32 rounding) times 1 + max |score| (the backward
recomputes the probabilities from f32 scores, as FlashAttention does). Rows with nothing visible are 0
in qkv (torch gives NaN): the reference zeroes them, removing their gradient.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import qkv
from conftest import EPSILON, FACTOR, FLOOR_ULPS, TORCH_DTYPE

# ---- the definitions, in NumPy --------------------------------------------------------


def _grid(lq, lk):
    return np.arange(lq)[:, None], np.arange(lk)[None, :]


def np_dilated(lq, lk, left, right, dilation):
    q, kv = _grid(lq, lk)
    d = kv - q
    return (d >= -left * dilation) & (d <= right * dilation) & (d % dilation == 0)


def np_fixed(lq, lk, block, summary, causal):
    q, kv = _grid(lq, lk)
    m = (kv // block == q // block) | (kv % block >= block - summary)
    return m & (kv <= q) if causal else m


def np_strided(lq, lk, stride, causal):
    q, kv = _grid(lq, lk)
    d = q - kv
    m = (np.abs(d) < stride) | (d % stride == 0)  # NumPy's % is non-negative for stride > 0
    return m & (kv <= q) if causal else m


def np_block_sparse(lq, lk, layout, bq, bk):
    q, kv = _grid(lq, lk)
    layout = np.asarray(layout, dtype=bool)
    if layout.ndim == 2:
        layout = layout[None]
    return layout[:, q // bq, kv // bk]  # [H or 1, Lq, Lk]


_M64 = (1 << 64) - 1


def _splitmix(state):
    """qkv::Generator::next_u64: (new state, output)."""
    state = (state + 0x9E3779B97F4A7C15) & _M64
    z = state
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _M64
    return state, z ^ (z >> 31)


def np_bigbird_random(seed, head, i, key_blocks, window_blocks, global_blocks, random_blocks, causal):
    """The random key blocks of (head, query block i), as qkv/sparse_masks.h documents them."""
    half = window_blocks // 2
    if random_blocks == 0 or i < global_blocks:
        return []
    n = min(i + 1, key_blocks) if causal else key_blocks
    candidates = [j for j in range(global_blocks, n) if abs(i - j) > half]
    m = len(candidates)
    t = min(random_blocks, m)
    state = _splitmix(seed)[1] ^ head
    state = _splitmix(state)[1] ^ i
    picked = []
    for u in range(m - t, m):
        state, x = _splitmix(state)
        x %= u + 1
        picked.append(u if x in picked else x)
    return sorted(candidates[c] for c in picked)


def np_bigbird(heads, lq, lk, block, window_blocks, global_blocks, random_blocks, seed, causal):
    nq, nk = -(-lq // block), -(-lk // block)
    cells = np.zeros((heads, nq, nk), dtype=bool)
    for h in range(heads):
        for i in range(nq):
            for j in range(nk):
                cells[h, i, j] = i < global_blocks or j < global_blocks or abs(i - j) <= window_blocks // 2
            for j in np_bigbird_random(seed, h, i, nk, window_blocks, global_blocks, random_blocks, causal):
                cells[h, i, j] = True
    q, kv = _grid(lq, lk)
    m = cells[:, q // block, kv // block]
    return m & (kv <= q) if causal else m


def np_longformer(lq, lk, left, right, glob):
    """glob: bool [L] or [B, L] -> [B or 1, 1, Lq, Lk]."""
    glob = np.asarray(glob, dtype=bool)
    if glob.ndim == 1:
        glob = glob[None]
    q, kv = _grid(lq, lk)
    window = (kv >= q - left) & (kv <= q + right)
    return (window | glob[:, :lq, None] | glob[:, None, :lk])[:, None]


def dense(mask, b, h, lq, lk):
    return np.asarray(qkv.mask_to_tensor(mask, b, h, lq, lk))


# ---- masks and their definitions --------------------------------------------------------

B, H = 2, 2


def _layout(heads, nq, nk, seed):
    rng = np.random.default_rng(seed)
    layout = rng.random((heads, nq, nk)) < 0.3
    if nq > 1:
        layout[0, 1] = False  # a query block that sees nothing
    return layout


def _globals(length, seed):
    rng = np.random.default_rng(seed)
    g = rng.random((B, length)) < 0.03
    g[0, 0] = True
    return g


def cases(lq, lk):
    """(name, mask, bool [B or 1, H or 1, Lq, Lk]) for sizes lq x lk."""
    n = max(lq, lk)
    out = []
    for left, right, dil in [(3, 2, 1), (4, 4, 3), (0, 5, 2), (16, 0, 7)]:
        out.append((f"dilated{left, right, dil}", qkv.dilated_window_mask(left, right, dil),
                    np_dilated(lq, lk, left, right, dil)))
    for block, summary, causal in [(16, 2, False), (16, 2, True), (7, 0, False), (5, 5, True)]:
        out.append((f"fixed{block, summary, causal}", qkv.sparse_fixed_mask(block, summary, causal),
                    np_fixed(lq, lk, block, summary, causal)))
    for stride, causal in [(1, False), (13, False), (13, True), (40, True)]:
        out.append((f"strided{stride, causal}", qkv.sparse_strided_mask(stride, causal),
                    np_strided(lq, lk, stride, causal)))
    for bq, bk, heads, dtype in [(16, 32, 2, bool), (7, 5, 1, np.int32), (64, 64, 2, np.int64)]:
        layout = _layout(heads, -(-n // bq), -(-n // bk), bq + bk).astype(dtype)
        arg = layout if heads > 1 else layout[0]
        out.append((f"block_sparse{bq, bk, heads}", qkv.block_sparse_mask(arg, bq, bk),
                    np_block_sparse(lq, lk, arg, bq, bk)))
    for block, w, g, r, causal in [(16, 3, 1, 2, False), (16, 3, 1, 2, True), (7, 1, 0, 3, False),
                                   (32, 5, 2, 3, False)]:
        out.append((f"bigbird{block, w, g, r, causal}", qkv.bigbird_mask(block, w, g, r, 1234, causal),
                    np_bigbird(H, lq, lk, block, w, g, r, 1234, causal)))
    glob = _globals(n, n)
    for left, right in [(4, 4), (0, 0), (32, 7)]:
        out.append((f"longformer{left, right}", qkv.longformer_mask(left, right, glob),
                    np_longformer(lq, lk, left, right, glob)))
    out.append(("longformer[L]", qkv.longformer_mask(9, 3, glob[1]), np_longformer(lq, lk, 9, 3, glob[1])))
    out.append(("longformer indices", qkv.longformer_mask(2, 5, [40, 7, 7, 199]),
                np_longformer(lq, lk, 2, 5, np.isin(np.arange(n), [7, 40, 199]))))
    return out


SIZES = [(1, 1), (7, 7), (200, 200), (333, 200), (200, 333)]


@pytest.mark.parametrize("lq,lk", SIZES + [(1, 500), (1000, 1000)])
def test_patterns_equal_their_definitions(lq, lk):
    for name, mask, want in cases(lq, lk):
        got = dense(mask, B, H, lq, lk)
        assert got.dtype == np.bool_ and got.shape == (B, H, lq, lk), name
        want = np.broadcast_to(want, got.shape)
        bad = np.argwhere(got != want)
        assert bad.size == 0, f"{name}: {len(bad)} pairs differ, first (b, h, q, kv) = {bad[:3].tolist()}"


# ---- attention against torch ---------------------------------------------------------------


def _reference(q, k, v, allowed, dtype):
    """SDPA in `dtype` with the bool mask; rows with nothing visible give 0 (and no gradient)."""
    live = allowed.any(-1, keepdim=True)
    out = F.scaled_dot_product_attention(q.to(dtype), k.to(dtype), v.to(dtype), attn_mask=allowed | ~live)
    return out * live


def _check_rule(got, ref, theirs, dtype, what, least_scale=1e-30, factor=1.0):
    err = (got - ref).abs().max().item() if ref.numel() else 0.0
    torch_err = (theirs.double() - ref).abs().max().item() if ref.numel() else 0.0
    scale = max(ref.abs().max().item() if ref.numel() else 0.0, least_scale) * factor
    bound = FACTOR * torch_err + FLOOR_ULPS[dtype] * EPSILON[dtype] * scale
    assert err <= bound, f"{what} [{dtype}]: qkv error {err:.3e} > {bound:.3e} (torch {torch_err:.3e})"


def _check_attention(name, mask, allowed_np, lq, lk, dtype, seed):
    allowed = torch.from_numpy(np.ascontiguousarray(np.broadcast_to(allowed_np, (B, H, lq, lk))))
    gen = torch.Generator().manual_seed(seed)
    d = 32
    q, k, v, go = (torch.randn(B, H, n, d, dtype=torch.float64, generator=gen).to(TORCH_DTYPE[dtype])
                   for n in (lq, lk, lk, lq))
    out, lse = qkv.attention(qkv.from_dlpack(q), qkv.from_dlpack(k), qkv.from_dlpack(v), mask_mod=mask,
                             return_lse=True)
    got = torch.from_dlpack(out).double()
    assert torch.isfinite(got).all(), name
    live = allowed.any(-1)
    assert (got[~live] == 0).all() and torch.isneginf(torch.from_dlpack(lse)[~live]).all(), name

    leaves = {}
    results = {}
    for label, t in (("ref", torch.float64), (dtype, TORCH_DTYPE[dtype]), ("f32", torch.float32)):
        xs = [x.double().to(t).requires_grad_() for x in (q, k, v)]
        o = _reference(*xs, allowed, t)
        o.backward(go.to(t))
        results[label] = o.detach().double()
        leaves[label] = [x.grad.double() for x in xs]
    what = f"{name} Lq{lq} Lk{lk}"
    _check_rule(got, results["ref"], results[dtype], dtype, what + " output")
    if dtype == "bf16":
        _check_rule(got, results["ref"], results["f32"], "f32", what + " output (f32 rule)")

    g = qkv.attention_backward(qkv.from_dlpack(go), qkv.from_dlpack(q), qkv.from_dlpack(k), qkv.from_dlpack(v),
                               output=out, lse=lse, mask_mod=mask)
    # The backward recomputes P = exp(s - lse) from f32 scores: relative error eps x |s|.
    s_max = (q.double() @ k.double().transpose(-2, -1)).abs().max().item() / d**0.5 if q.numel() * k.numel() else 0
    for i, x in enumerate("qkv"):
        ours = torch.from_dlpack(g[x]).double()
        assert torch.isfinite(ours).all(), f"{what} d{x}"
        kw = dict(least_scale=1.0, factor=1.0 + s_max)
        _check_rule(ours, leaves["ref"][i], leaves[dtype][i], dtype, f"{what} d{x}", **kw)
        if dtype == "bf16":
            _check_rule(ours, leaves["ref"][i], leaves["f32"][i], "f32", f"{what} d{x} (f32 rule)", **kw)
    return int((~live).sum())


@pytest.mark.parametrize("dtype", ["f32", "bf16"])
@pytest.mark.parametrize("lq,lk", SIZES)
def test_attention_matches_sdpa_with_the_dense_mask(lq, lk, dtype):
    empty = 0
    for t, (name, mask, allowed) in enumerate(cases(lq, lk)):
        empty += _check_attention(name, mask, allowed, lq, lk, dtype, seed=lq * 1000 + lk + t)
    if lq > lk:
        assert empty > 0  # dilated windows past the last key, the empty layout row


@pytest.mark.parametrize("dtype", ["f32", "bf16"])
def test_attention_at_1000(dtype):
    picked = {"dilated(4, 4, 3)", "fixed(16, 2, True)", "strided(40, True)", "block_sparse(16, 32, 2)",
              "bigbird(32, 5, 2, 3, False)", "longformer(32, 7)"}
    ran = 0
    for name, mask, allowed in cases(1000, 1000):
        if name in picked:
            _check_attention(name, mask, allowed, 1000, 1000, dtype, seed=len(name))
            ran += 1
    assert ran == len(picked)


# ---- BigBird's seed, and errors --------------------------------------------------------------


def test_bigbird_is_reproducible_and_seeded():
    def pattern(seed, heads=2, lq=256, causal=False):
        return dense(qkv.bigbird_mask(16, 3, 1, 3, seed, causal), 1, heads, lq, 256)

    a, b, c = pattern(7), pattern(7), pattern(8)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)
    assert not np.array_equal(a[:, 0], a[:, 1])  # heads draw differently
    # Independent of the number of heads and of Lq.
    assert np.array_equal(pattern(7, heads=5, lq=100)[:, :2], a[:, :, :100])
    # The window / global part is the same for every seed; only the random blocks move.
    fixed = np_bigbird(2, 256, 256, 16, 3, 1, 0, 0, False)
    assert (a[0] >= fixed).all() and (c[0] >= fixed).all()
    assert np.array_equal(pattern(3, causal=True)[0], np_bigbird(2, 256, 256, 16, 3, 1, 3, 3, True))


def test_errors():
    cases_ = [
        (lambda: qkv.dilated_window_mask(2, 2, 0), "dilated_window_mask: dilation"),
        (lambda: qkv.dilated_window_mask(-1, 2, 1), "dilated_window_mask.*-1"),
        (lambda: qkv.sparse_fixed_mask(8, 9), "sparse_fixed_mask.*summary 9"),
        (lambda: qkv.sparse_fixed_mask(0, 0), "sparse_fixed_mask.*block 0"),
        (lambda: qkv.sparse_strided_mask(0), "sparse_strided_mask.*0"),
        (lambda: qkv.block_sparse_mask(np.ones(4, bool), 8, 8), r"block_sparse_mask.*\[4\]"),
        (lambda: qkv.block_sparse_mask(np.ones((4, 4), np.float32), 8, 8), "block_sparse_mask.*f32"),
        (lambda: qkv.block_sparse_mask(np.full((4, 4), 3, np.int64), 8, 8), "block_sparse_mask.*only 0 and 1"),
        (lambda: qkv.block_sparse_mask(np.ones((4, 4), bool), 0, 8), "block_sparse_mask.*0"),
        (lambda: qkv.bigbird_mask(8, 2, 1, 1, 0), "bigbird_mask: window_blocks must be odd.*2"),
        (lambda: qkv.bigbird_mask(8, 3, 1, 65, 0), "bigbird_mask: random_blocks.*65"),
        (lambda: qkv.longformer_mask(-2, 0, [1]), "longformer_mask.*-2"),
        (lambda: qkv.longformer_mask(2, 0, [3, -4]), "longformer_mask.*-4"),
        (lambda: qkv.longformer_mask(2, 0, np.zeros((2, 3, 4), bool)), r"longformer_mask.*\[2, 3, 4\]"),
        (lambda: qkv.mask_to_tensor(qkv.sparse_strided_mask(3), 1, 1, -1, 4), "mask_to_tensor.*Lq -1"),
    ]
    for fn, pattern in cases_:
        with pytest.raises(qkv.QkvError, match=pattern):
            fn()
    x = qkv.from_dlpack(torch.zeros(2, 3, 40, 8))
    with pytest.raises(qkv.QkvError, match="block_sparse_mask.*Lq = 40"):
        qkv.attention(x, x, x, mask_mod=qkv.block_sparse_mask(np.ones((3, 4, 5), bool), 8, 8))
    with pytest.raises(qkv.QkvError, match="block_sparse_mask.*H = 3"):
        qkv.attention(x, x, x, mask_mod=qkv.block_sparse_mask(np.ones((2, 5, 5), bool), 8, 8))
    with pytest.raises(qkv.QkvError, match=r"longformer_mask.*L >= 40"):
        qkv.attention(x, x, x, mask_mod=qkv.longformer_mask(1, 1, np.zeros(30, bool)))
    with pytest.raises(qkv.QkvError, match="longformer_mask.*B = 2"):
        qkv.attention(x, x, x, mask_mod=qkv.longformer_mask(1, 1, np.zeros((3, 40), bool)))
    bird = qkv.bigbird_mask(8, 3, 1, 2, 0)
    with pytest.raises(qkv.QkvError, match="bigbird_mask.*not bound"):
        bird.allowed(0, 0, 30, 2)
    qkv.attention(x, x, x, mask_mod=bird)  # binds it to 5 key blocks
    y = qkv.from_dlpack(torch.zeros(2, 3, 41, 8))
    with pytest.raises(qkv.QkvError, match="bigbird_mask.*5 key blocks.*Lk = 41"):
        qkv.attention(y, y, y, mask_mod=bird)
