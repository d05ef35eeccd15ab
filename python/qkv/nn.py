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
    AttentionVariant,
    DecoderCache,
    Dropout,
    Embedding,
    FeedForward,
    GPT,
    GPTConfig,
    KVCache,
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
    sample_next_token,
    sampling_distribution,
)

import numpy as _np  # noqa: E402

from . import QkvError as _QkvError  # noqa: E402
from . import autograd as _autograd  # noqa: E402


def _module_grads(self) -> dict:
    """Each parameter's gradient by name (those without one are left out): what
    ``qkv.clip_grad_norm`` and an optimizer's ``step`` take."""
    return {name: p.grad for name, p in self.named_parameters() if p.grad is not None}


Module.grads = _module_grads


class Model:
    """A model written in Python out of qkv.nn modules, like a torch.nn.Module.

    Attributes that are qkv.nn modules (all their parameters, frozen ones too,
    as torch lists them), other Models, or Variables that require a gradient
    are its parameters, named ``<attribute>.<child name>`` in the order they
    were set, so the names are torch's for a torch model with the same
    attributes. Optimizers take ``named_parameters()`` and keep the ones that
    require a gradient::

        class TinyLM(qkv.nn.Model):
            def __init__(self):
                super().__init__()
                self.embed = qkv.nn.Embedding(64, 32)
                self.head = qkv.nn.Linear(32, 64)

            def forward(self, ids):
                return self.head(self.embed(ids))
    """

    def __init__(self):
        self.training = True

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    def _children(self):
        for name, value in vars(self).items():
            if isinstance(value, (Module, Model)):
                yield name, value

    def named_parameters(self) -> list:
        out = []
        for name, value in vars(self).items():
            if isinstance(value, (Module, Model)):
                out += [(f"{name}.{sub}", p) for sub, p in value.named_parameters()]
            elif isinstance(value, _autograd.Variable) and value.requires_grad:
                out.append((name, value))
        return out

    def parameters(self) -> list:
        return [p for _, p in self.named_parameters()]

    def state_dict(self) -> dict:
        """Name -> Tensor sharing storage with the parameters (buffers included)."""
        out = {}
        for name, value in vars(self).items():
            if isinstance(value, (Module, Model)):
                out.update({f"{name}.{sub}": t for sub, t in value.state_dict().items()})
            elif isinstance(value, _autograd.Variable) and value.requires_grad:
                out[name] = value.value
        return out

    def load_state_dict(self, state_dict: dict, strict: bool = True):
        """Copies values in; returns (missing, unexpected). strict: a QkvError
        listing the missing and unexpected names (mismatched shapes always raise)."""
        own = self.state_dict()
        missing = [name for name in own if name not in state_dict]
        unexpected = [name for name in state_dict if name not in own]
        if strict and (missing or unexpected):
            raise _QkvError(f"{type(self).__name__}.load_state_dict: missing {missing}, "
                            f"unexpected {unexpected}")
        variables = {name: value for name, value in vars(self).items()
                     if isinstance(value, _autograd.Variable) and name in own and name in state_dict}
        for name, value in variables.items():
            if tuple(state_dict[name].shape) != tuple(value.shape):
                raise _QkvError(f"{type(self).__name__}.load_state_dict: {name} has shape "
                                f"{tuple(state_dict[name].shape)}, the model {tuple(value.shape)}")
        for name, value in vars(self).items():
            if isinstance(value, (Module, Model)):
                prefix = name + "."
                part = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
                value.load_state_dict(part, strict=False)
        for name, value in variables.items():
            value.value.numpy()[...] = _np.asarray(state_dict[name])
        return missing, unexpected

    def train(self, mode: bool = True):
        self.training = mode
        for _, child in self._children():
            child.train(mode)
        return self

    def eval(self):
        return self.train(False)

    def zero_grad(self):
        for p in self.parameters():
            p.zero_grad()

    grads = _module_grads
