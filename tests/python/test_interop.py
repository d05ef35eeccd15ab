"""Zero-copy interop: NumPy (buffer protocol / __array__), DLPack with torch and NumPy."""

import gc
import sys
import weakref

import numpy as np
import pytest
import torch

import qkv
from conftest import NUMPY_DTYPE, bits16, from_torch, to_torch


def test_from_numpy_shares_memory_both_ways():
    arr = np.arange(12, dtype=np.float32).reshape(3, 4)
    t = qkv.from_numpy(arr)
    assert t.shape == (3, 4) and t.strides == (4, 1) and t.dtype == "f32"
    assert t.data_ptr() == arr.ctypes.data
    arr[1, 2] = 100.0
    assert t[1, 2].item() == 100.0
    back = np.asarray(t)
    assert np.shares_memory(back, arr)
    back[0, 0] = -7.0
    assert arr[0, 0] == -7.0
    assert t.numpy().ctypes.data == arr.ctypes.data


@pytest.mark.parametrize("name", ["f32", "f16", "i32", "i64", "bool"])
def test_numpy_dtypes_round_trip(name):
    rng = np.random.default_rng(1)
    arr = (rng.standard_normal((5, 3)) * 10).astype(NUMPY_DTYPE[name])
    t = qkv.tensor(arr)
    assert t.dtype == name
    out = t.numpy()
    assert out.dtype == arr.dtype
    np.testing.assert_array_equal(out, arr)
    assert np.shares_memory(out, arr)
    assert t.tolist() == arr.tolist()


def test_tensor_keeps_array_alive():
    arr = np.arange(6, dtype=np.float32)
    ref = weakref.ref(arr) if hasattr(arr, "__weakref__") else None
    before = sys.getrefcount(arr)
    t = qkv.from_numpy(arr)
    assert sys.getrefcount(arr) > before  # the storage holds a reference
    del arr
    gc.collect()
    if ref is not None:
        assert ref() is not None
    np.testing.assert_array_equal(t.numpy(), np.arange(6, dtype=np.float32))
    del t
    gc.collect()
    if ref is not None:
        assert ref() is None  # and lets go of it with the last tensor


def test_reference_released_with_last_view():
    arr = np.arange(6, dtype=np.float32)
    before = sys.getrefcount(arr)
    t = qkv.from_numpy(arr)
    v = t[1:4]
    del t
    assert sys.getrefcount(arr) > before
    del v
    gc.collect()
    assert sys.getrefcount(arr) == before


def test_array_outlives_tensor():
    t = qkv.arange(5)
    a = np.asarray(t)
    m = memoryview(t)
    del t
    gc.collect()
    np.testing.assert_array_equal(a, np.arange(5, dtype=np.float32))
    assert m.tolist() == [0.0, 1.0, 2.0, 3.0, 4.0]


def test_buffer_protocol():
    t = qkv.arange(6).view(2, 3)
    m = memoryview(t)
    assert m.format == "f" and m.shape == (2, 3) and m.strides == (12, 4) and not m.readonly
    assert m.tolist() == [[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]]
    tt = t.transpose(0, 1)
    np.testing.assert_array_equal(np.asarray(tt), np.arange(6, dtype=np.float32).reshape(2, 3).T)
    assert bytes(memoryview(qkv.full([2], 1.0))) == np.ones(2, np.float32).tobytes()


@pytest.mark.parametrize(
    "make",
    [
        lambda a: a.T,
        lambda a: a[:, ::2],
        lambda a: a[::-1],
        lambda a: a[::-2, ::-1],
        lambda a: np.broadcast_to(a[:1], (4, 6)),
        lambda a: a[2:3, 1:5],
        lambda a: a[:0],
    ],
)
def test_strided_arrays_are_wrapped_not_copied(make):
    base = np.arange(24, dtype=np.float32).reshape(4, 6)
    arr = make(base)
    t = qkv.from_numpy(arr)
    assert t.shape == arr.shape
    np.testing.assert_array_equal(np.asarray(t), arr)
    assert t.tolist() == arr.tolist()
    if arr.size:
        assert np.shares_memory(np.asarray(t), base)
        assert t.strides == tuple(s // arr.itemsize for s in arr.strides)


def test_read_only_arrays_are_accepted():
    arr = np.frombuffer(np.arange(4, dtype=np.float32).tobytes(), dtype=np.float32)
    assert not arr.flags.writeable
    t = qkv.from_numpy(arr)
    assert t.tolist() == [0.0, 1.0, 2.0, 3.0]


def test_unsupported_dtype_raises():
    with pytest.raises(qkv.QkvError, match="complex64"):
        qkv.from_numpy(np.zeros(3, dtype=np.complex64))
    with pytest.raises(qkv.QkvError, match="uint8"):
        qkv.from_numpy(np.zeros(3, dtype=np.uint8))


def test_float64_arrays_are_f64():
    arr = np.arange(3, dtype=np.float64) / 3
    t = qkv.from_numpy(arr)
    assert t.dtype == "f64" and t.numpy().tolist() == arr.tolist()
    assert np.asarray(t).dtype == np.float64
    assert qkv.tensor(arr).dtype == "f32"  # Python's floats and float64 arrays -> f32 by default
    assert qkv.tensor(arr, dtype="float64").tolist() == arr.tolist()
    assert qkv.tensor([0.1], dtype="f64").item() == 0.1


def test_tensor_converts_what_from_numpy_refuses():
    t = qkv.tensor([[1.5, 2.0], [3.0, 4.0]])
    assert t.dtype == "f32" and t.tolist() == [[1.5, 2.0], [3.0, 4.0]]
    assert qkv.tensor([1, 2, 3]).dtype == "i64"
    assert qkv.tensor(np.zeros(2), dtype="bf16").dtype == "bf16"
    t2 = qkv.tensor(t)
    assert t2.data_ptr() == t.data_ptr()


def test_bf16_has_no_numpy_dtype():
    t = qkv.ones([3], "bf16")
    with pytest.raises(qkv.QkvError, match=r"to\('f32'\)"):
        t.numpy()
    with pytest.raises(qkv.QkvError, match="bfloat16"):
        np.asarray(t)
    np.testing.assert_array_equal(t.to("f32").numpy(), np.ones(3, np.float32))


def test_array_dunder_dtype_and_copy():
    t = qkv.arange(3)
    a = np.array(t, dtype=np.float64)
    assert a.dtype == np.float64 and a.tolist() == [0.0, 1.0, 2.0]
    c = np.array(t, copy=True)
    c[0] = 9
    assert t[0].item() == 0.0


# ---- DLPack ---------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.int32, torch.int64, torch.bool])
def test_torch_to_qkv_shares_memory(dtype):
    x = (torch.randn(4, 5) * 4).to(dtype)
    t = from_torch(x)
    assert t.data_ptr() == x.data_ptr()
    assert t.shape == (4, 5)
    y = to_torch(t)
    assert y.dtype == dtype and y.data_ptr() == x.data_ptr()
    assert torch.equal(y, x)
    if dtype.is_floating_point:
        x[0, 0] = 3.0
        assert t[0, 0].item() == 3.0


def test_torch_bf16_bits_survive_dlpack():
    x = torch.randn(1000).to(torch.bfloat16)
    t = from_torch(x)
    assert t.dtype == "bf16"
    back = to_torch(t.clone())
    np.testing.assert_array_equal(bits16(back), bits16(x))


def test_qkv_to_torch_and_back_mutation():
    t = qkv.zeros([2, 3])
    y = torch.from_dlpack(t)
    y[1, 2] = 5.0
    assert t[1, 2].item() == 5.0
    assert np.from_dlpack(t)[1, 2] == 5.0
    assert t.__dlpack_device__() == (1, 0)


def test_dlpack_of_views():
    t = qkv.arange(12).view(3, 4)
    v = t.transpose(0, 1)[1:, ::2]
    y = torch.from_dlpack(v)
    ref = torch.arange(12, dtype=torch.float32).view(3, 4).T[1:, ::2]
    assert torch.equal(y, ref)
    assert y.stride() == v.strides


def test_torch_tensor_outlives_qkv_and_back():
    x = torch.arange(6, dtype=torch.float32)
    t = from_torch(x)
    del x
    gc.collect()
    assert t.tolist() == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
    t = qkv.arange(4)
    y = torch.from_dlpack(t)
    del t
    gc.collect()
    assert y.tolist() == [0.0, 1.0, 2.0, 3.0]


def test_non_contiguous_torch_input():
    x = torch.arange(24, dtype=torch.float32).view(4, 6).T
    t = from_torch(x)
    assert t.strides == x.stride()
    assert t.tolist() == x.tolist()
