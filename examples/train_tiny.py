"""Training a small Transformer from Python: the causal language model of
examples/train_tiny.cc (token embedding + learned positions + 2 encoder layers +
a linear head) on sequences x[t + 1] = x[t] + k (mod 32), with AdamW, linear
warm-up / decay and clipping. README.md "Training" quotes this file.

    python examples/train_tiny.py [steps] [weights path]   (200, train_tiny.safetensors)
"""
import sys

import numpy as np

import qkv
from qkv import autograd as ag

VOCAB, SEQ, BATCH, DIM = 32, 24, 8, 64


class TinyLM(qkv.nn.Model):
    def __init__(self):
        super().__init__()
        self.embed = qkv.nn.Embedding(VOCAB, DIM, seed=0)
        self.pos = qkv.nn.Embedding(SEQ, DIM, seed=1)
        layer = qkv.nn.TransformerEncoderLayer(DIM, 4, dim_feedforward=128, dropout=0.0,
                                               batch_first=True)
        self.encoder = qkv.nn.TransformerEncoder(layer, num_layers=2, seed=2)
        self.head = qkv.nn.Linear(DIM, VOCAB, seed=3)

    def loss(self, ids, targets):  # [B, L] int64 -> mean next-token cross-entropy
        x = ag.add(self.embed(qkv.tensor(ids)), self.pos(qkv.arange(SEQ, "i64")))
        logits = self.head(self.encoder(x, is_causal=True))
        return ag.cross_entropy(ag.reshape(logits, [-1, VOCAB]), qkv.tensor(targets.reshape(-1)))


def batch(rng):
    start = rng.integers(0, VOCAB, size=(BATCH, 1))
    stride = rng.integers(1, 6, size=(BATCH, 1))
    seq = (start + stride * np.arange(SEQ + 1)) % VOCAB
    return seq[:, :-1], seq[:, 1:]


def main(steps=200, path="train_tiny.safetensors"):
    rng = np.random.default_rng(1)
    model = TinyLM()
    opt = qkv.AdamW(model.named_parameters(), lr=1e-3, weight_decay=0.01)
    losses = []
    for step in range(steps):
        opt.lr = 1e-3 * qkv.linear_schedule_with_warmup(step, steps // 10, steps)
        loss = model.loss(*batch(rng))
        model.zero_grad()
        loss.backward()
        grads = model.grads()
        qkv.clip_grad_norm(grads, max_norm=1.0)
        opt.step(grads)
        losses.append(float(loss.value.numpy()))
        if (step + 1) % 20 == 0:
            print(f"step {step + 1:3d}  loss {losses[-1]:.4f}")
    qkv.save_model(path, model)  # by torch's names: loads into torch too
    print(f"loss {losses[0]:.4f} -> {losses[-1]:.4f}")
    return losses


if __name__ == "__main__":
    losses = main(*[f(a) for f, a in zip((int, str), sys.argv[1:])])
    sys.exit(0 if losses[-1] < losses[0] else 1)
