"""qkv.Tensor views and copies against NumPy, factories, threads, errors."""

import numpy as np
import pytest

import qkv


def base():
    arr = np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4)
    return arr, qkv.from_numpy(arr)


def check_view(t: qkv.Tensor, expected: np.ndarray, arr: np.ndarray, shares: bool = True):
    got = np.asarray(t)
    assert t.shape == expected.shape
    np.testing.assert_array_equal(got, expected)
    if expected.size and shares:
        assert np.shares_memory(got, arr)
        # Strides in elements; a size-1 dim's stride never matters.
        want = [s // expected.itemsize for s in expected.strides]
        assert [s for s, n in zip(t.strides, t.shape) if n > 1] == [
            s for s, n in zip(want, expected.shape) if n > 1
        ]


@pytest.mark.parametrize(
    "view, ref",
    [
        (lambda t: t.slice(1, 0, 2), lambda a: a[:, 0:2]),
        (lambda t: t.slice(2, 1, 4, 2), lambda a: a[:, :, 1:4:2]),
        (lambda t: t.slice(-1, -3, 100), lambda a: a[..., -3:100]),
        (lambda t: t.narrow(1, 1, 2), lambda a: a[:, 1:3]),
        (lambda t: t.select(0, 1), lambda a: a[1]),
        (lambda t: t.select(2, -1), lambda a: a[:, :, -1]),
        (lambda t: t.permute(2, 0, 1), lambda a: a.transpose(2, 0, 1)),
        (lambda t: t.permute([1, 2, 0]), lambda a: a.transpose(1, 2, 0)),
        (lambda t: t.transpose(0, 2), lambda a: a.swapaxes(0, 2)),
        (lambda t: t.view(6, 4), lambda a: a.reshape(6, 4)),
        (lambda t: t.view(-1), lambda a: a.reshape(-1)),
        (lambda t: t.reshape((4, -1)), lambda a: a.reshape(4, -1)),
        (lambda t: t.unsqueeze(1), lambda a: a[:, None]),
        (lambda t: t.unsqueeze(-1), lambda a: a[..., None]),
        (lambda t: t[:1].squeeze(0), lambda a: a[0]),
        (lambda t: t[:, :1].expand(2, 5, 4), lambda a: np.broadcast_to(a[:, :1], (2, 5, 4))),
        (lambda t: t.expand(3, -1, -1, -1), lambda a: np.broadcast_to(a, (3, 2, 3, 4))),
        (lambda t: t.T, lambda a: a.swapaxes(-2, -1)),
    ],
)
def test_views_match_numpy(view, ref):
    arr, t = base()
    check_view(view(t), ref(arr), arr)


@pytest.mark.parametrize(
    "key",
    [
        0,
        -1,
        (1, 2),
        (1, 2, 3),
        slice(None),
        slice(1, None),
        (slice(None), slice(0, 3, 2)),
        (Ellipsis, 1),
        (None, 0),
        (0, None, slice(1, 3), None),
        (Ellipsis, None),
        (slice(5, 10),),
        (slice(-2, None), Ellipsis, slice(None, None, 3)),
        np.int64(1),
    ],
)
def test_getitem_matches_numpy(key):
    arr, t = base()
    check_view(t[key], arr[key], arr)


def test_getitem_errors():
    _, t = base()
    with pytest.raises(IndexError):
        t[2]
    with pytest.raises(IndexError):
        t[0, 0, 0, 0]
    with pytest.raises(IndexError):
        t[::-1]
    with pytest.raises(TypeError):
        t["a"]
    assert len(list(t)) == 2  # iteration stops at IndexError


def test_view_of_non_contiguous_raises_and_reshape_copies():
    arr, t = base()
    tt = t.transpose(0, 2)
    assert not tt.is_contiguous()
    with pytest.raises(qkv.QkvError):
        tt.view(24)
    r = tt.reshape(24)
    check_view(r, arr.swapaxes(0, 2).reshape(24), arr, shares=False)
    assert not np.shares_memory(np.asarray(r), arr)


def test_copies_do_not_share():
    arr, t = base()
    for c in (t.clone(), t.transpose(1, 2).contiguous(), t.to("f16")):
        assert c.is_contiguous()
        a = np.asarray(c)
        assert not np.shares_memory(a, arr)
    assert t.contiguous().data_ptr() == t.data_ptr()  # already contiguous: no copy
    np.testing.assert_array_equal(np.asarray(t.transpose(1, 2).contiguous()), arr.swapaxes(1, 2))


def test_copy_into_view():
    arr, t = base()
    t[0].copy_(qkv.zeros([3, 4]))
    assert (arr[0] == 0).all() and (arr[1] != 0).any()


def test_properties_and_repr():
    _, t = base()
    assert t.ndim == 3 and t.dim() == 3 and t.numel() == 24 and len(t) == 2
    assert t.size(-1) == 4 and t.stride(0) == 12
    assert t.itemsize == 4 and t.nbytes == 96 and t.device == "cpu"
    assert t.is_contiguous()
    s = repr(t)
    assert "f32" in s and "[2, 3, 4]" in s
    assert qkv.full([], 2.5).item() == 2.5


@pytest.mark.parametrize("dtype", ["f32", "bf16", "f16", "i32", "i64", "bool"])
def test_factories(dtype):
    assert qkv.zeros([2, 3], dtype).dtype == dtype
    assert qkv.zeros([2, 3], dtype).tolist() == np.zeros((2, 3)).astype(bool if dtype == "bool" else float).tolist()
    assert qkv.ones([4], dtype).to("f32").tolist() == [1.0] * 4
    expected = [1, 1] if dtype == "bool" else [3, 3]
    assert qkv.full([2], 3, dtype).to("i64").tolist() == expected


def test_arange_and_random():
    assert qkv.arange(4).tolist() == [0.0, 1.0, 2.0, 3.0]
    assert qkv.arange(3, "i64").tolist() == [0, 1, 2]
    a, b = qkv.randn([1000], seed=3), qkv.randn([1000], seed=3)
    np.testing.assert_array_equal(a.numpy(), b.numpy())  # deterministic per seed
    x = a.numpy()
    assert abs(x.mean()) < 0.15 and 0.85 < x.std() < 1.15
    u = qkv.rand([1000], seed=4).numpy()
    assert u.min() >= 0 and u.max() < 1


def test_dtype_names():
    t = qkv.arange(3)
    assert t.to("float16").dtype == "f16" and t.to("bfloat16").dtype == "bf16"
    assert t.to("f64").dtype == "f64" and t.to("float64").tolist() == [0.0, 1.0, 2.0]
    with pytest.raises(qkv.QkvError, match="f128"):
        t.to("f128")


def test_threads():
    qkv.set_num_threads(1)
    assert qkv.num_threads() == 1
    qkv.set_num_threads(2)
    assert qkv.num_threads() == 2
    with pytest.raises(qkv.QkvError, match="0"):
        qkv.set_num_threads(0)


def test_qkv_error_is_value_error():
    assert issubclass(qkv.QkvError, ValueError)
    with pytest.raises(ValueError, match="out of range"):
        qkv.arange(3).select(0, 7)
