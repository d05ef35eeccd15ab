"""Read and write .safetensors files with qkv.

    tensors = qkv.safetensors.load("model.safetensors")   # dict of zero-copy views
    qkv.safetensors.save("out.safetensors", {"w": t}, metadata={"format": "pt"})
    with qkv.safetensors.safe_open("model.safetensors") as f:
        for name in f.keys():
            t = f.get_tensor(name)

Tensors returned by the reader are zero-copy views of the file's private
(copy-on-write) mapping: writing into one changes this process's copy only,
never the file.
"""

from __future__ import annotations

from ._qkv.safetensors import File, load, save, serialize  # noqa: F401


def safe_open(path, framework: str = "qkv", device: str = "cpu") -> File:
    """Opens a file like ``safetensors.safe_open``; only qkv tensors on the CPU."""
    if framework not in ("qkv",):
        raise ValueError(f"qkv.safetensors.safe_open: framework must be 'qkv', got {framework!r}")
    if device != "cpu":
        raise ValueError(f"qkv.safetensors.safe_open: device must be 'cpu', got {device!r}")
    return File.open(str(path))


__all__ = ["File", "load", "save", "serialize", "safe_open"]
