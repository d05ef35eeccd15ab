"""The embedding ops and the position / segment embedding modules against PyTorch:
torch.nn.functional.embedding and its autograd, torch.nn.Embedding with the same
weights, and a direct transcription of SPEC §2's segmented positional encoding."""
import math

import pytest
import torch

import qkv

F = torch.nn.functional


def _q(t):
    return qkv.from_dlpack(t.detach().contiguous())


def _t(x):
    return torch.from_dlpack(x)


def _ids(shape, n, dtype=torch.int64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, n, shape, generator=g).to(dtype)


# --- embedding and embedding_backward ---

@pytest.mark.parametrize("id_dtype", [torch.int32, torch.int64])
@pytest.mark.parametrize("w_dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(7,), (3, 5), (2, 3, 4), (), (0,), (2, 0)])
def test_embedding_matches_torch(shape, w_dtype, id_dtype):
    g = torch.Generator().manual_seed(1)
    weight = torch.randn(11, 24, generator=g).to(w_dtype)
    ids = _ids(shape, 11, id_dtype)
    out = _t(qkv.embedding(_q(weight), _q(ids)))
    assert out.dtype == torch.float32
    ref = F.embedding(ids.long(), weight.float())
    assert out.shape == ref.shape
    assert torch.equal(out, ref)  # a copy: exact


def test_embedding_reads_strided_tables():
    g = torch.Generator().manual_seed(2)
    weight = torch.randn(16, 9, generator=g).t()  # [9, 16], column stride 9
    ids = _ids((5, 3), 9)
    assert torch.equal(_t(qkv.embedding(qkv.from_dlpack(weight), _q(ids))), F.embedding(ids, weight))
    rows = torch.randn(12, 32, generator=g)[::3, :20]  # [4, 20], row stride 96
    ids = _ids((6,), 4)
    assert torch.equal(_t(qkv.embedding(qkv.from_dlpack(rows), _q(ids))), F.embedding(ids, rows))


# (shape, n, d, padding_idx): every padding_idx inside its table.
BACKWARD_CASES = [(shape, n, d, p)
                  for shape, n, d in [((6, 50), 10, 16), ((4000,), 3, 256), ((2, 3), 100, 5),
                                      ((0,), 4, 8), ((3, 0), 5, 2)]
                  for p in (None, 0, 3) if p is None or p < n]


@pytest.mark.parametrize("id_dtype", [torch.int32, torch.int64])
@pytest.mark.parametrize("shape,n,d,padding_idx", BACKWARD_CASES)
def test_embedding_backward_matches_autograd(shape, n, d, id_dtype, padding_idx):
    g = torch.Generator().manual_seed(3)
    weight = torch.randn(n, d, generator=g, dtype=torch.float64, requires_grad=True)
    ids = _ids(shape, n, id_dtype, seed=4)  # many repeated ids
    out = F.embedding(ids.long(), weight, padding_idx=padding_idx)
    grad = torch.randn(out.shape, generator=g).float()
    out.backward(grad.double())
    got = _t(qkv.embedding_backward(_q(grad), _q(ids), n, -1 if padding_idx is None else padding_idx))
    assert got.shape == (n, d) and got.dtype == torch.float32
    count = max(1, ids.numel() // n)
    torch.testing.assert_close(got.double(), weight.grad, rtol=0, atol=1e-6 * count * 4)
    if padding_idx is not None:
        assert not got[padding_idx].any()


def test_embedding_backward_bf16_grad_and_determinism():
    g = torch.Generator().manual_seed(5)
    ids = _ids((64, 33), 5, seed=6)
    grad = torch.randn(64, 33, 512, generator=g).to(torch.bfloat16)
    results = []
    for threads in (1, 2):
        qkv.set_num_threads(threads)
        results.append(_t(qkv.embedding_backward(_q(grad), _q(ids), 5)).clone())
    assert torch.equal(results[0], results[1]), "the sum depends on the thread count"
    ref = torch.zeros(5, 512, dtype=torch.float64).index_add_(0, ids.flatten(), grad.double().reshape(-1, 512))
    torch.testing.assert_close(results[0].double(), ref, rtol=0, atol=1e-4)


def test_embedding_errors_name_the_values():
    weight = _q(torch.zeros(5, 3))
    ids = torch.tensor([[0, 1, 2], [3, 7, 4]])
    with pytest.raises(qkv.QkvError, match=r"id 7 at position \[1, 1\].*5 embeddings"):
        qkv.embedding(weight, _q(ids))
    with pytest.raises(qkv.QkvError, match="id -2"):
        qkv.embedding(weight, _q(torch.tensor([-2], dtype=torch.int32)))
    with pytest.raises(qkv.QkvError, match="i32 or i64"):
        qkv.embedding(weight, _q(torch.zeros(2)))
    with pytest.raises(qkv.QkvError, match=r"\[5\]"):
        qkv.embedding(_q(torch.zeros(5)), _q(ids))
    with pytest.raises(qkv.QkvError, match="id 7"):
        qkv.embedding_backward(_q(torch.zeros(2, 3, 3)), _q(ids), 5)
    with pytest.raises(qkv.QkvError, match=r"\[2, 4, 3\]"):
        qkv.embedding_backward(_q(torch.zeros(2, 4, 3)), _q(ids), 8)
    with pytest.raises(qkv.QkvError, match="padding_idx 8"):
        qkv.embedding_backward(_q(torch.zeros(2, 3, 3)), _q(ids), 8, padding_idx=8)


# --- LearnedPositionEmbedding and TokenTypeEmbedding against torch.nn.Embedding ---

def _pair(ours, rows, dim):
    theirs = torch.nn.Embedding(rows, dim)
    assert sorted(ours.parameters()) == sorted(theirs.state_dict()) == ["weight"]
    ours.load_state_dict({name: _q(t) for name, t in theirs.state_dict().items()})
    return theirs


@pytest.mark.parametrize("length,offset", [(10, 0), (7, 5), (0, 3), (64, 0), (1, 63)])
def test_learned_positions_match_torch(length, offset):
    ours = qkv.LearnedPositionEmbedding(64, 24, seed=1)
    theirs = _pair(ours, 64, 24)
    ref = theirs(torch.arange(offset, offset + length))
    out = _t(ours.forward(length, offset))
    assert torch.equal(out, ref.detach())
    grad = torch.randn(ref.shape, generator=torch.Generator().manual_seed(2))
    ref.backward(grad)
    grads = ours.backward(_q(grad))
    assert sorted(grads) == ["weight"]
    torch.testing.assert_close(_t(grads["weight"]), theirs.weight.grad, rtol=0, atol=0)


def test_learned_positions_by_ids_match_torch():
    ours = qkv.LearnedPositionEmbedding(40, 16, seed=3)
    theirs = _pair(ours, 40, 16)
    ids = torch.stack([torch.arange(5, 17), torch.arange(0, 12)]).int()  # [2, 12], overlapping
    ref = theirs(ids.long())
    assert torch.equal(_t(ours.forward(_q(ids))), ref.detach())
    grad = torch.randn(ref.shape, generator=torch.Generator().manual_seed(4))
    ref.backward(grad)
    torch.testing.assert_close(_t(ours.backward(_q(grad))["weight"]), theirs.weight.grad,
                               rtol=1e-6, atol=1e-6)


def test_token_types_match_torch():
    ours = qkv.TokenTypeEmbedding(2, 32, seed=5)
    theirs = _pair(ours, 2, 32)
    ids = torch.zeros(3, 20, dtype=torch.int64)
    ids[:, 9:] = 1  # sentence A, then B
    ids[2, 15:] = 0
    ref = theirs(ids)
    out = _t(ours.forward(_q(ids)))
    assert out.shape == (3, 20, 32)
    assert torch.equal(out, ref.detach())
    grad = torch.randn(ref.shape, generator=torch.Generator().manual_seed(6))
    ref.backward(grad)
    torch.testing.assert_close(_t(ours.backward(_q(grad))["weight"]), theirs.weight.grad,
                               rtol=1e-5, atol=1e-5)


def test_parameters_share_storage_with_the_module():
    ours = qkv.LearnedPositionEmbedding(8, 4)
    _t(ours.parameters()["weight"]).fill_(2.5)
    assert torch.equal(_t(ours.forward(3)), torch.full((3, 4), 2.5))


@pytest.mark.parametrize("make", [lambda s: qkv.LearnedPositionEmbedding(4096, 64, seed=s),
                                  lambda s: qkv.TokenTypeEmbedding(2048, 128, seed=s),
                                  lambda s: qkv.SegmentedPositionEncoding(2048, 128, "learned", seed=s)])
def test_initialisation_is_standard_normal(make):
    w = _t(next(iter(make(7).parameters().values()))).double()
    assert w.numel() == 262144
    # The mean of 2^18 N(0, 1) draws has std 2^-9; the sample std about 2^-9.5.
    assert abs(float(w.mean())) < 0.01
    assert abs(float(w.std()) - 1.0) < 0.01
    assert abs(float((w.abs() < 1).double().mean()) - 0.6827) < 0.01  # normal, not uniform
    assert torch.equal(w, _t(next(iter(make(7).parameters().values()))).double())
    assert not torch.equal(w, _t(next(iter(make(8).parameters().values()))).double())


def test_module_errors_name_the_values():
    pos = qkv.LearnedPositionEmbedding(16, 8)
    with pytest.raises(qkv.QkvError, match=r"offset 10 \+ length 7.*max_positions 16"):
        pos.forward(7, 10)
    with pytest.raises(qkv.QkvError, match="LearnedPositionEmbedding.forward: .*id 16"):
        pos.forward(_q(torch.tensor([3, 16])))
    with pytest.raises(qkv.QkvError, match=r"called before forward"):
        qkv.LearnedPositionEmbedding(4, 2).backward(_q(torch.zeros(1, 2)))
    pos.forward(5)
    with pytest.raises(qkv.QkvError, match=r"\[5, 8\].*\[4, 8\]"):
        pos.backward(_q(torch.zeros(4, 8)))
    with pytest.raises(qkv.QkvError,
                       match=r"LearnedPositionEmbedding.load_state_dict.*weight \(checkpoint \[16, 9\], model \[16, 8\]\)"):
        pos.load_state_dict({"weight": _q(torch.zeros(16, 9))})
    with pytest.raises(qkv.QkvError, match=r"missing keys: weight; unexpected keys: bias"):
        pos.load_state_dict({"bias": _q(torch.zeros(8))})
    with pytest.raises(qkv.QkvError, match="max_positions 0"):
        qkv.LearnedPositionEmbedding(0, 8)
    types = qkv.TokenTypeEmbedding(2, 4)
    with pytest.raises(qkv.QkvError, match=r"TokenTypeEmbedding.forward: .*id 2 at position \[0, 1\]"):
        types.forward(_q(torch.tensor([[0, 2]])))


# --- SegmentedPositionEncoding against SPEC §2 ---

def _sinusoid(length, dim):
    pos = torch.arange(length, dtype=torch.float64)[:, None]
    i = torch.arange(dim)
    angle = pos / torch.pow(10000.0, (i // 2 * 2).double() / dim)
    return torch.where(i % 2 == 0, torch.sin(angle), torch.cos(angle))


def _segmented_reference(n, k, dim, kind, table=None):
    """SPEC §2: m = ceil(n / k); PE(p) = sinusoid(p mod m) (+ embedding of p // m)."""
    m = math.ceil(n / k)
    p = torch.arange(n)
    out = _sinusoid(m, dim)[p % m] if n else torch.zeros(0, dim, dtype=torch.float64)
    if kind == "sinusoidal":
        out = out + _sinusoid(k, dim)[p // m]
    elif kind == "learned":
        out = out + table[p // m]
    return out


@pytest.mark.parametrize("kind", ["none", "sinusoidal", "learned"])
@pytest.mark.parametrize("n,k", [(12, 4), (10, 4), (100, 7), (3, 5), (1, 1), (0, 3), (9, 1)])
def test_segmented_matches_spec(n, k, kind):
    dim = 10
    ours = qkv.SegmentedPositionEncoding(k, dim, kind, seed=9)
    params = ours.parameters()
    table = None
    if kind == "learned":
        assert list(params) == ["segment_embedding.weight"]
        table = _t(params["segment_embedding.weight"]).double().clone().requires_grad_()
        assert table.shape == (k, dim)
    else:
        assert not params
    ref = _segmented_reference(n, k, dim, kind, table)
    out = _t(ours.forward(n))
    assert out.shape == (n, dim)
    torch.testing.assert_close(out.double(), ref.detach(), rtol=0, atol=2e-6)
    grad = torch.randn(n, dim, generator=torch.Generator().manual_seed(n)).float()
    grads = ours.backward(_q(grad))
    if kind != "learned":
        assert not grads
        return
    ref.backward(grad.double())
    torch.testing.assert_close(_t(grads["segment_embedding.weight"]).double(), table.grad,
                               rtol=0, atol=1e-5)


def test_segmented_learned_table_loads_and_is_used():
    ours = qkv.SegmentedPositionEncoding(3, 4, "learned")
    table = torch.arange(12, dtype=torch.float32).reshape(3, 4) * 100
    ours.load_state_dict({"segment_embedding.weight": _q(table)})
    ref = _segmented_reference(8, 3, 4, "learned", table.double())  # m = 3: segments 3, 3, 2
    torch.testing.assert_close(_t(ours.forward(8)).double(), ref, rtol=0, atol=1e-4)


def test_segmented_errors_name_the_values():
    with pytest.raises(qkv.QkvError, match="segments 0"):
        qkv.SegmentedPositionEncoding(0, 8)
    with pytest.raises(qkv.QkvError, match="segments -2"):
        qkv.SegmentedPositionEncoding(-2, 8)
    with pytest.raises(qkv.QkvError, match="dim 0"):
        qkv.SegmentedPositionEncoding(2, 0)
    with pytest.raises(qkv.QkvError, match="'rope'"):
        qkv.SegmentedPositionEncoding(2, 8, "rope")
    enc = qkv.SegmentedPositionEncoding(2, 8, "learned")
    with pytest.raises(qkv.QkvError, match="got -1"):
        enc.forward(-1)
    with pytest.raises(qkv.QkvError, match="called before forward"):
        enc.backward(_q(torch.zeros(4, 8)))
    enc.forward(6)
    with pytest.raises(qkv.QkvError, match=r"\[6, 8\].*\[4, 8\]"):
        enc.backward(_q(torch.zeros(4, 8)))
    with pytest.raises(qkv.QkvError, match=r"SegmentedPositionEncoding.load_state_dict.*segment_embedding.weight"):
        enc.load_state_dict({"segment_embedding.weight": _q(torch.zeros(3, 8))})
