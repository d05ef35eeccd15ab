"""qkv.autograd: reverse-mode automatic differentiation over qkv tensors.

    w = qkv.autograd.Variable(qkv.randn([4, 3]), requires_grad=True)
    loss = qkv.autograd.mean(qkv.autograd.matmul(qkv.autograd.Variable(x), w))
    loss.backward()          # w.grad holds d loss / d w (f32)

Ops record onto the tape when an input requires a gradient; ``no_grad()``
turns recording off in its block (per thread).

``gradcheck(fn, leaves)`` checks backward against central finite differences
in f64, as torch.autograd.gradcheck does::

    x = qkv.autograd.Variable(qkv.randn([3, 5], dtype="f64"), requires_grad=True)
    result = qkv.autograd.gradcheck(lambda: qkv.autograd.softmax(x), [x])
    assert result["passed"], result["failures"]
"""

from __future__ import annotations

import contextlib

from ._qkv.autograd import (  # noqa: F401
    Variable,
    add,
    autocast_enabled,
    attention,
    cross_entropy,
    embedding,
    gelu,
    grad_enabled,
    gradcheck,
    layer_norm,
    linear,
    log_softmax,
    matmul,
    mean,
    mse_loss,
    mul,
    narrow,
    permute,
    relu,
    reshape,
    rms_norm,
    scale,
    select,
    set_autocast_enabled,
    set_grad_enabled,
    silu,
    softmax,
    sub,
    sum,
    to,
    transpose,
)


@contextlib.contextmanager
def no_grad():
    """Ops inside the block record nothing (inference, optimizer updates)."""
    previous = grad_enabled()
    set_grad_enabled(False)
    try:
        yield
    finally:
        set_grad_enabled(previous)


@contextlib.contextmanager
def autocast(enabled: bool = True):
    """bf16 mixed precision in the block: matmul, linear and attention run on bf16
    copies of their inputs (f32 results); parameters and gradients stay f32."""
    previous = autocast_enabled()
    set_autocast_enabled(enabled)
    try:
        yield
    finally:
        set_autocast_enabled(previous)
