"""qkv.nn: Transformer layers as modules on qkv.autograd, with torch.nn's names.

    model = qkv.nn.Transformer(d_model=64, nhead=4, batch_first=True, seed=0)
    model.load_state_dict({k: qkv.from_dlpack(v.float()) for k, v in torch_model.state_dict().items()})
    out = model(qkv.autograd.Variable(src), qkv.autograd.Variable(tgt), tgt_is_causal=True)

Each constructor takes a ``seed`` for its initialisation and dropout masks;
dropout is active only in training mode (``train()`` / ``eval()``).
"""

from __future__ import annotations

from ._qkv.nn import (  # noqa: F401
    AttentionPoolingClassifier,
    Dropout,
    Embedding,
    FeedForward,
    LayerNorm,
    Linear,
    Module,
    MultiheadAttention,
    RMSNorm,
    Transformer,
    TransformerDecoder,
    TransformerDecoderLayer,
    TransformerEncoder,
    TransformerEncoderLayer,
)
