"""qkv: an engine for self-attention and Transformer models.

The C++ library does the work; this package is its Python front door. Tensors
share memory with NumPy and PyTorch both ways (no copies):

    t = qkv.from_numpy(arr)       # or qkv.tensor(arr), or any DLPack producer
    a = t.numpy()                 # np.asarray(t), memoryview(t) work too
    x = torch.from_dlpack(t)      # bf16 included

Errors raised by the library are ``qkv.QkvError`` (a ``ValueError``).
"""

from __future__ import annotations

import numpy as _np

from . import _qkv
from ._qkv import (  # noqa: F401
    Adam,
    AdamW,
    BleuScore,
    ByteLevelBPE,
    CharTokenizer,
    Encoding,
    LearnedPositionEmbedding,
    MaskMod,
    Optimizer,
    QkvError,
    SGD,
    ScoreMod,
    SegmentedPositionEncoding,
    TextVectors,
    Tensor,
    TokenTypeEmbedding,
    WordPiece,
    __version__,
    add,
    alibi_score,
    alibi_slopes,
    additive_attention,
    additive_attention_backward,
    arange,
    attention,
    attention_backward,
    attention_dropout_mask,
    bias_score,
    bigbird_mask,
    block_sparse_mask,
    causal_mask,
    clip_grad_norm,
    corpus_bleu,
    constant_schedule,
    cosine_schedule_with_warmup,
    cross_entropy,
    cross_entropy_backward,
    custom_mask,
    dilated_window_mask,
    div,
    document_mask,
    dropout,
    dropout_backward,
    embedding,
    embedding_backward,
    embedding_table_for,
    empty,
    exp,
    from_dlpack,
    from_numpy,
    full,
    gelu,
    gelu_backward,
    general_attention,
    general_attention_backward,
    kl_div,
    kl_div_backward,
    kl_div_distillation,
    kl_div_distillation_backward,
    layer_norm,
    layer_norm_backward,
    linear_attention,
    linear_attention_backward,
    linear_schedule_with_warmup,
    linformer_attention,
    linformer_attention_backward,
    load_model,
    load_state_dict_file,
    load_text_vectors,
    log_softmax,
    log_softmax_backward,
    longformer_mask,
    matmul,
    matmul_primitive_count,
    max,
    mask_and,
    mask_or,
    mask_to_tensor,
    mean,
    mse_loss,
    mse_loss_backward,
    mul,
    num_threads,
    ones,
    performer_attention,
    performer_attention_backward,
    performer_projection,
    prefix_lm_mask,
    rand,
    randn,
    relu,
    relu_backward,
    rms_norm,
    rms_norm_backward,
    rotary_embedding,
    rotary_embedding_backward,
    save_model,
    save_state_dict,
    scale,
    score_chain,
    set_num_threads,
    silu,
    shaw_attention,
    shaw_attention_backward,
    silu_backward,
    sinusoidal_positions,
    sliding_window_mask,
    softcap_score,
    softmax,
    softmax_backward,
    sparse_fixed_mask,
    sparse_strided_mask,
    sub,
    sum,
    sum_to_shape,
    t5_bias_score,
    t5_relative_bucket,
    tokenize_13a,
    transformer_schedule,
    zeros,
)
from . import autograd, bert, nn, safetensors, viz  # noqa: F401,E402

# One multi-head attention: torch.nn.MultiheadAttention's interface on qkv.autograd.
MultiheadAttention = nn.MultiheadAttention

DTYPES = ("f32", "f64", "bf16", "f16", "i32", "i64", "bool")

_NUMPY_DTYPES = {
    "float32": "f32",
    "float16": "f16",
    "int32": "i32",
    "int64": "i64",
    "bool": "bool",
}


def tensor(data, dtype: str | None = None) -> Tensor:
    """A qkv Tensor from a Tensor, an array-like or nested lists.

    Arrays of float32, float16, int32, int64 or bool (bfloat16 through DLPack)
    are wrapped without a copy, as ``from_numpy`` does. Other inputs are
    converted with NumPy first (float64 -> f32, as for Python floats; other ints
    -> i64), which copies: pass ``dtype="f64"``, or use ``from_numpy``, to keep
    float64. ``dtype`` converts afterwards (a copy unless it is already that dtype).
    """
    if isinstance(data, Tensor):
        t = data
    elif hasattr(data, "__dlpack__") and not isinstance(data, _np.ndarray):
        t = from_numpy(data)
    else:
        arr = _np.asarray(data)
        if arr.dtype.name not in _NUMPY_DTYPES:
            if arr.dtype.kind == "f":
                keep64 = dtype in ("f64", "float64", "double")
                arr = arr.astype(_np.float64 if keep64 else _np.float32)
            elif arr.dtype.kind in "iu":
                arr = arr.astype(_np.int64)
            else:
                raise QkvError(f"qkv.tensor: cannot make a tensor of NumPy dtype {arr.dtype}")
        t = from_numpy(arr)
    return t if dtype is None else t.to(dtype)


def _binary(op):
    def apply(self, other):
        if isinstance(other, (int, float)) and op is mul:
            return scale(self, float(other))
        if isinstance(other, (int, float)) and op is add:
            return add(self, full([], float(other), self.dtype))
        return op(self, other)

    return apply


# Operators on Tensor, through the ops (no special cases in C++).
Tensor.__add__ = _binary(add)
Tensor.__radd__ = _binary(add)
Tensor.__mul__ = _binary(mul)
Tensor.__rmul__ = _binary(mul)
Tensor.__matmul__ = lambda self, other: matmul(self, other)
Tensor.T = property(lambda self: self.transpose(-2, -1))

__all__ = [name for name in dir() if not name.startswith("_")]
