"""safetensors interop with the reference Python package, both directions, bit for bit."""

import json
import pathlib

import numpy as np
import pytest
import safetensors.numpy
import safetensors.torch
import torch

import qkv
from conftest import from_torch, to_torch

FIXTURES = pathlib.Path(__file__).resolve().parents[1] / "data" / "safetensors"
SPECIAL = [0.0, -0.0, 1.0, -2.5, float("inf"), float("-inf"), float("nan"), 1e-7, 65504.0, 1e-40]


def raw_bytes(x: torch.Tensor) -> bytes:
    return x.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def qkv_raw_bytes(t: qkv.Tensor) -> bytes:
    return raw_bytes(to_torch(t))


def torch_tensors():
    g = torch.Generator().manual_seed(3)
    return {
        "f32": torch.randn(3, 4, generator=g),
        "f32_special": torch.tensor(SPECIAL),
        "bf16": (torch.randn(5, 2, generator=g) * 100).to(torch.bfloat16),
        "bf16_special": torch.tensor(SPECIAL).to(torch.bfloat16),
        "f16": torch.tensor(SPECIAL + [6e-8, 3e-5]).to(torch.float16),
        "i32": torch.tensor([[0, -1, 2**31 - 1], [-(2**31), 5, 6]], dtype=torch.int32),
        "i64": torch.tensor([2**62, -(2**63), -1], dtype=torch.int64),
        "mask": torch.tensor([True, False, True]),
        "scalar": torch.tensor(2.5),
        "empty": torch.zeros(0, 4),
        "layers.0.attn.weight": torch.arange(6, dtype=torch.float32).reshape(2, 3),
    }


def test_python_written_files_load_bit_exactly(tmp_path):
    tensors = torch_tensors()
    path = tmp_path / "ref.safetensors"
    safetensors.torch.save_file(tensors, path, metadata={"format": "pt", "note": "x"})
    loaded = qkv.safetensors.load(str(path))
    assert sorted(loaded) == sorted(tensors)
    for name, want in tensors.items():
        got = loaded[name]
        assert got.shape == tuple(want.shape), name
        assert to_torch(got).dtype == want.dtype, name
        assert qkv_raw_bytes(got) == raw_bytes(want), name
    with qkv.safetensors.safe_open(path) as f:
        assert f.metadata() == {"format": "pt", "note": "x"}
        assert f.keys() == sorted(tensors)
        assert len(f) == len(tensors) and "f32" in f and "nope" not in f
        info = f.info("bf16")
        assert info["dtype"] == "BF16" and info["shape"] == [5, 2]
        assert info["data_offsets"][1] - info["data_offsets"][0] == 20
        assert qkv_raw_bytes(f.get_tensor("i64")) == raw_bytes(tensors["i64"])


def test_qkv_written_files_load_bit_exactly_and_byte_identically(tmp_path):
    tensors = torch_tensors()
    ours = tmp_path / "qkv.safetensors"
    theirs = tmp_path / "ref.safetensors"
    meta = {"format": "pt"}
    qkv.safetensors.save(str(ours), {k: from_torch(v) for k, v in tensors.items()}, metadata=meta)
    safetensors.torch.save_file(tensors, theirs, metadata=meta)
    loaded = safetensors.torch.load_file(ours)
    for name, want in tensors.items():
        assert loaded[name].dtype == want.dtype and raw_bytes(loaded[name]) == raw_bytes(want), name
    with safetensors.safe_open(ours, framework="pt") as f:
        assert f.metadata() == meta
    # One metadata key: the reference writer's output is deterministic, and qkv's matches it.
    assert ours.read_bytes() == theirs.read_bytes()
    assert qkv.safetensors.serialize({k: from_torch(v) for k, v in tensors.items()}, meta) == ours.read_bytes()


def test_numpy_round_trip(tmp_path):
    arrays = {
        "x": np.linspace(-1, 1, 6, dtype=np.float32).reshape(3, 2),
        "h": np.array([0.5, -0.25, 1024.0], dtype=np.float16),
        "ids": np.array([3, 1, 4, 1, 5], dtype=np.int64),
        "pos": np.array([[9, 8], [7, 6]], dtype=np.int32),
        "flags": np.array([True, True, False]),
    }
    path = tmp_path / "np.safetensors"
    qkv.safetensors.save(str(path), arrays)  # NumPy arrays convert without copies
    back = safetensors.numpy.load_file(path)
    for name, arr in arrays.items():
        assert back[name].dtype == arr.dtype
        np.testing.assert_array_equal(back[name], arr)
    safetensors.numpy.save_file(arrays, tmp_path / "ref.safetensors")
    assert path.read_bytes() == (tmp_path / "ref.safetensors").read_bytes()
    for name, t in qkv.safetensors.load(str(path)).items():
        np.testing.assert_array_equal(t.numpy(), arrays[name])


def test_strided_tensors_are_written_as_their_values(tmp_path):
    x = qkv.arange(12).view(3, 4)
    views = {"t": x.transpose(0, 1), "s": x[:, ::2], "e": x[:1].expand(2, 4)}
    path = tmp_path / "views.safetensors"
    qkv.safetensors.save(str(path), views)
    back = safetensors.torch.load_file(path)
    for name, v in views.items():
        assert torch.equal(back[name], to_torch(v).contiguous()), name


def test_checked_in_fixtures():
    expected = json.loads((FIXTURES / "expected.json").read_text())
    for file_name, want in expected.items():
        f = qkv.safetensors.File.open(str(FIXTURES / file_name))
        assert f.metadata() == want["metadata"], file_name
        for name, entry in want["tensors"].items():
            assert f.info(name)["dtype"] == entry["dtype"]
            assert f.info(name)["shape"] == entry["shape"]
            if entry["dtype"] == "U8":
                with pytest.raises(qkv.QkvError, match=entry["dtype"]):
                    f.get(name)
                continue
            t = f.get(name)
            assert t.shape == tuple(entry["shape"])
            assert qkv_raw_bytes(t).hex() == entry["hex"], (file_name, name)


def test_loaded_views_are_zero_copy_and_outlive_the_file(tmp_path):
    path = tmp_path / "a.safetensors"
    safetensors.torch.save_file({"w": torch.arange(1000, dtype=torch.float32)}, path)
    f = qkv.safetensors.File.open(str(path))
    a, b = f.get("w"), f.get("w")
    assert a.data_ptr() == b.data_ptr()  # views into one mapping
    del f
    path.unlink()
    assert a[999].item() == 999.0
    a.numpy()[0] = 5.0  # copy-on-write pages: the process sees it, the file never does
    assert b[0].item() == 5.0


def test_from_bytes_and_serialize():
    data = safetensors.torch.save({"x": torch.tensor([1.0, 2.0]), "y": torch.tensor([3], dtype=torch.int64)})
    f = qkv.safetensors.File.from_bytes(data)
    assert f.get("x").tolist() == [1.0, 2.0] and f.get("y").tolist() == [3]
    assert qkv.safetensors.serialize({"x": f.get("x"), "y": f.get("y")}) == data


def test_bad_files_raise_qkv_error(tmp_path):
    good = safetensors.torch.save({"x": torch.arange(4, dtype=torch.float32)})
    with pytest.raises(qkv.QkvError):
        qkv.safetensors.File.from_bytes(good[:-1])  # truncated data
    with pytest.raises(qkv.QkvError):
        qkv.safetensors.File.from_bytes(b"\x05")  # shorter than the header length
    header = b'{"x": {"dtype": "F32", "shape": [2], "data_offsets": [0, 12]}}'
    bad = len(header).to_bytes(8, "little") + header + bytes(12)
    with pytest.raises(qkv.QkvError, match="12"):
        qkv.safetensors.File.from_bytes(bad)  # 2 x F32 is 8 bytes, not 12
    with pytest.raises(qkv.QkvError):
        qkv.safetensors.File.from_bytes(len(b"{not json").to_bytes(8, "little") + b"{not json")
    with pytest.raises(qkv.QkvError, match="missing"):
        qkv.safetensors.load(str(tmp_path / "missing.safetensors"))
    f = qkv.safetensors.File.from_bytes(good)
    with pytest.raises(qkv.QkvError, match="nope"):
        f.get("nope")
    with pytest.raises(TypeError):
        qkv.safetensors.save(str(tmp_path / "x.safetensors"), {"x": qkv.zeros([2])}, metadata={"k": 1})
