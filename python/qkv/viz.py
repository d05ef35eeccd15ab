"""qkv.viz: attention you can see.

    maps = model.attention_maps(ids)                  # one [H, T, T] per layer
    qkv.viz.write_head_png("l0h3.png", tokens, maps, layer=0, head=3)
    qkv.viz.write_grid_png("grid.png", tokens, maps, title="my model")
    qkv.viz.write_html("attention.html", tokens, maps)  # offline head view
    qkv.viz.write_bertviz_json("attention.json", tokens, maps)

``tokens`` is a list of str (one per position); each layer is a qkv tensor or
anything NumPy can read (NumPy arrays, torch tensors) of shape [heads, T, T]
whose rows are probability distributions. Every file is written atomically.
"""

from __future__ import annotations

from ._qkv.viz import (  # noqa: F401
    bertviz_json,
    write_bertviz_json,
    write_grid_png,
    write_head_png,
    write_html,
)
