"""Writes the safetensors interop fixtures under tests/data/safetensors/.

Each file is written by the reference Python package (safetensors.torch or
safetensors.numpy); expected.json records, for every file, its metadata and
every tensor's dtype, shape and raw little-endian bytes (hex), so the C++ test
can check both directions bit-exactly: loading gives these bytes, and
serialize() of the same tensors gives the file's bytes.

Run from anywhere: python3 tests/data/make_safetensors_fixtures.py
"""

import json
import pathlib

import numpy as np
import safetensors.numpy
import safetensors.torch
import torch

OUT = pathlib.Path(__file__).resolve().parent / "safetensors"
SPECIAL = [0.0, -0.0, 1.0, -2.5, float("inf"), float("-inf"), float("nan"), 1e-7, 65504.0, 3.14159]


def torch_tensors():
    g = torch.Generator().manual_seed(7)
    return {
        "f32": torch.randn(2, 3, generator=g),
        "f32_special": torch.tensor(SPECIAL, dtype=torch.float32),
        "bf16": torch.tensor(SPECIAL, dtype=torch.float32).to(torch.bfloat16),
        "f16": torch.tensor(SPECIAL + [6e-8, 1e-5], dtype=torch.float32).to(torch.float16),
        "i32": torch.tensor([[0, -1, 2147483647], [-2147483648, 5, 6]], dtype=torch.int32),
        "i64": torch.tensor([2**62, -(2**63), -1], dtype=torch.int64),
        "mask": torch.tensor([[True, False, True], [False, False, True]]),
        "scalar": torch.tensor(1.5, dtype=torch.float32),
        "empty": torch.zeros(0, 3, dtype=torch.float32),
        "empty_bf16": torch.zeros(4, 0, dtype=torch.bfloat16),
        "a.weight": torch.arange(8, dtype=torch.float32).reshape(2, 2, 2),
    }


def numpy_tensors():
    return {
        "x": np.linspace(-1, 1, 6, dtype=np.float32).reshape(3, 2),
        "h": np.array([0.5, -0.25, 1024.0], dtype=np.float16),
        "ids": np.array([3, 1, 4, 1, 5], dtype=np.int64),
        "pos": np.array([[9, 8], [7, 6]], dtype=np.int32),
        "flags": np.array([True, True, False]),
    }


def describe(tensors, metadata):
    entries = {}
    for name, t in tensors.items():
        if isinstance(t, torch.Tensor):
            dtype = {torch.float32: "F32", torch.bfloat16: "BF16", torch.float16: "F16",
                     torch.int32: "I32", torch.int64: "I64", torch.bool: "BOOL",
                     torch.float64: "F64", torch.uint8: "U8"}[t.dtype]
            shape = list(t.shape)
            raw = t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
        else:
            dtype = {"float32": "F32", "float16": "F16", "int32": "I32", "int64": "I64",
                     "bool": "BOOL"}[str(t.dtype)]
            shape = list(t.shape)
            raw = t.astype(t.dtype.newbyteorder("<")).tobytes()
        entries[name] = {"dtype": dtype, "shape": shape, "hex": raw.hex()}
    return {"metadata": metadata or {}, "tensors": entries}


def main():
    OUT.mkdir(exist_ok=True)
    expected = {}

    def torch_file(name, tensors, metadata, byte_identical=True):
        safetensors.torch.save_file(tensors, OUT / name, metadata=metadata)
        expected[name] = describe(tensors, metadata)
        expected[name]["byte_identical"] = byte_identical

    torch_file("torch_all_dtypes.safetensors", torch_tensors(), {"format": "pt"})
    torch_file("torch_no_metadata.safetensors", {"w": torch.ones(3, dtype=torch.bfloat16)}, None)
    # serde_json's string escapes: quotes, backslashes, control characters, non-ASCII.
    torch_file("torch_escapes.safetensors",
               {'q"uote\\back\nnl\ttab\x01ctl\x7fdel': torch.tensor([1], dtype=torch.int32),
                "caf\u00e9 \u6f22\u5b57 \U0001f600": torch.tensor([2.0])},
               {"k\"\x1f": "v\\\u00e9\n"})
    torch_file("torch_empty.safetensors", {}, None)
    # Two or more metadata keys come out in Rust HashMap order, which varies by run.
    torch_file("torch_metadata.safetensors", {"t": torch.tensor([1.0, 2.0])},
               {"format": "pt", "step": "1200", "note": "three keys", "": "empty key"},
               byte_identical=False)
    # Known to the format but not to qkv, so qkv cannot write it back.
    torch_file("torch_unsupported.safetensors",
               {"f64": torch.tensor([1.0, 2.0], dtype=torch.float64),
                "u8": torch.tensor([1, 2, 255], dtype=torch.uint8),
                "ok": torch.tensor([7], dtype=torch.int32)},
               None, byte_identical=False)

    arrays = numpy_tensors()
    safetensors.numpy.save_file(arrays, OUT / "numpy_mixed.safetensors", metadata={"source": "numpy"})
    expected["numpy_mixed.safetensors"] = describe(arrays, {"source": "numpy"})
    expected["numpy_mixed.safetensors"]["byte_identical"] = True

    (OUT / "expected.json").write_text(json.dumps(expected, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
