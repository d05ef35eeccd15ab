#!/usr/bin/env python3
"""One training step of a GPT-like model: qkv against PyTorch eager (issue 5, "Speed").

The model (both frameworks, the same weights and the same batch):
  character-level Tiny Shakespeare (vocab 65), context 256, batch 8;
  token embedding + learned position embedding (added);
  6 pre-norm blocks, d = 384, 6 heads: x + attn(LN(x)) with causal self-attention
  (packed in_proj [3d, d] + bias, out_proj), then x + W2 gelu(W1 LN(x)) (4x, exact GELU);
  a final LayerNorm and an untied head Linear(384, 65, bias=False); 10.8M parameters.
One step = forward, mean cross-entropy over the 2048 next-character targets,
backward, AdamW step (lr 3e-4, betas (0.9, 0.95), weight_decay 0.1, on every
parameter), gradients dropped (set to None).

qkv: qkv.nn (Embedding, TransformerEncoder of TransformerEncoderLayer(norm_first=True,
batch_first=True, activation="gelu", dropout=0), Linear) on qkv.autograd, the fused causal
attention, qkv.AdamW; bf16 = qkv.autograd.autocast().
torch: the same module tree by hand (torch.nn.Linear / LayerNorm / Embedding,
F.scaled_dot_product_attention(is_causal=True), F.gelu), torch.optim.AdamW with its
default implementation (foreach=None: the single-tensor loop for CPU tensors) and
zero_grad(set_to_none=True); bf16 = torch.autocast("cpu", dtype=torch.bfloat16).

First both give the same loss and gradients (f32: tight; bf16: loose), and the loss
after one AdamW step; then tokens/s (B * L / median step time), alternating in one
process (runner.Bench, same thread count); then the peak memory of each in a fresh
subprocess: ru_maxrss growth over the first step after setup (model, optimizer, batch).

    .venv/bin/python bench/train_step.py --out bench/results/train-step-2026-11-22
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys

import numpy as np

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
import runner  # noqa: E402

CFG = {"vocab": 65, "context": 256, "batch": 8, "layers": 6, "d_model": 384, "heads": 6, "ff": 4 * 384,
       "head": "untied, no bias", "positions": "learned", "norm": "pre-norm + final LayerNorm",
       "activation": "gelu (erf)", "optimizer": "AdamW lr 3e-4 betas (0.9, 0.95) wd 0.1"}
LR, BETAS, WD = 3e-4, (0.9, 0.95), 0.1


def batch(seed: int = 0):
    """B windows of L + 1 characters of Tiny Shakespeare: ids [B, L] and next-char targets [B, L]."""
    text = (ROOT / "data" / "tinyshakespeare" / "input.txt").read_text()
    chars = sorted(set(text))
    assert len(chars) == CFG["vocab"], len(chars)
    index = {c: i for i, c in enumerate(chars)}
    rng = np.random.default_rng(seed)
    L, B = CFG["context"], CFG["batch"]
    starts = rng.integers(0, len(text) - L - 1, size=B)
    data = np.array([[index[c] for c in text[s:s + L + 1]] for s in starts], dtype=np.int64)
    return np.ascontiguousarray(data[:, :-1]), np.ascontiguousarray(data[:, 1:])


# ---- qkv ---------------------------------------------------------------------------------


class QkvGPT:
    def __init__(self, seed: int = 0):
        import qkv.nn as qnn

        c = CFG
        self.parts = {
            "tok_emb": qnn.Embedding(c["vocab"], c["d_model"], seed=seed + 1),
            "pos_emb": qnn.Embedding(c["context"], c["d_model"], seed=seed + 2),
            "blocks": qnn.TransformerEncoder(
                qnn.TransformerEncoderLayer(c["d_model"], c["heads"], c["ff"], dropout=0.0, activation="gelu",
                                            batch_first=True, norm_first=True),
                c["layers"], norm=True, seed=seed + 3),
            "head": qnn.Linear(c["d_model"], c["vocab"], bias=False, seed=seed + 4),
        }

    def named_parameters(self):
        return {f"{p}.{n}": v for p, m in self.parts.items() for n, v in m.named_parameters()}

    def state_dict(self):
        return {f"{p}.{n}": t for p, m in self.parts.items() for n, t in m.state_dict().items()}

    def zero_grad(self):
        for m in self.parts.values():
            m.zero_grad()

    def loss(self, ids, pos, targets):
        import qkv.autograd as A

        p = self.parts
        x = A.add(p["tok_emb"](ids), p["pos_emb"](pos))
        x = p["blocks"](x, is_causal=True)
        logits = p["head"](x)
        return A.cross_entropy(A.reshape(logits, [CFG["batch"] * CFG["context"], CFG["vocab"]]), targets)


class QkvStep:
    def __init__(self, ids: np.ndarray, targets: np.ndarray, bf16: bool, seed: int = 0, model: QkvGPT | None = None):
        import qkv

        self.model = model or QkvGPT(seed)
        self.ids = qkv.from_numpy(ids)
        self.pos = qkv.from_numpy(np.arange(CFG["context"], dtype=np.int64))
        self.targets = qkv.from_numpy(targets.reshape(-1))
        self.vars = self.model.named_parameters()
        self.opt = qkv.AdamW(self.model.state_dict(), lr=LR, betas=BETAS, weight_decay=WD)
        self.bf16 = bf16

    def forward_backward(self):
        import qkv.autograd as A

        with A.autocast(self.bf16):
            loss = self.model.loss(self.ids, self.pos, self.targets)
        loss.backward()
        return loss

    def __call__(self):
        loss = self.forward_backward()
        self.opt.step({n: v.grad for n, v in self.vars.items() if v.grad is not None})
        self.model.zero_grad()
        return loss


# ---- torch -------------------------------------------------------------------------------


def torch_model():
    import torch
    import torch.nn.functional as F
    from torch import nn

    c = CFG
    d, h = c["d_model"], c["heads"]

    class SelfAttention(nn.Module):
        def __init__(self):
            super().__init__()
            self.in_proj_weight = nn.Parameter(torch.empty(3 * d, d))
            self.in_proj_bias = nn.Parameter(torch.zeros(3 * d))
            self.out_proj = nn.Linear(d, d)

        def forward(self, x):
            b, l, _ = x.shape
            q, k, v = F.linear(x, self.in_proj_weight, self.in_proj_bias).split(d, dim=-1)
            q, k, v = (t.view(b, l, h, d // h).transpose(1, 2) for t in (q, k, v))
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            return self.out_proj(y.transpose(1, 2).reshape(b, l, d))

    class Layer(nn.Module):
        def __init__(self):
            super().__init__()
            self.self_attn = SelfAttention()
            self.linear1 = nn.Linear(d, c["ff"])
            self.linear2 = nn.Linear(c["ff"], d)
            self.norm1 = nn.LayerNorm(d)
            self.norm2 = nn.LayerNorm(d)

        def forward(self, x):
            x = x + self.self_attn(self.norm1(x))
            return x + self.linear2(F.gelu(self.linear1(self.norm2(x))))

    class Blocks(nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = nn.ModuleList(Layer() for _ in range(c["layers"]))
            self.norm = nn.LayerNorm(d)

        def forward(self, x):
            for layer in self.layers:
                x = layer(x)
            return self.norm(x)

    class GPT(nn.Module):
        def __init__(self):
            super().__init__()
            self.tok_emb = nn.Embedding(c["vocab"], d)
            self.pos_emb = nn.Embedding(c["context"], d)
            self.blocks = Blocks()
            self.head = nn.Linear(d, c["vocab"], bias=False)

        def loss(self, ids, pos, targets):
            x = self.tok_emb(ids) + self.pos_emb(pos)
            logits = self.head(self.blocks(x))
            return F.cross_entropy(logits.view(-1, c["vocab"]).float(), targets)

    return GPT()


class TorchStep:
    def __init__(self, ids: np.ndarray, targets: np.ndarray, bf16: bool, state: dict | None = None):
        import torch

        self.torch = torch
        self.model = torch_model()
        if state is not None:
            self.model.load_state_dict(state, strict=True)
        self.ids = torch.from_numpy(ids)
        self.pos = torch.arange(CFG["context"])
        self.targets = torch.from_numpy(targets.reshape(-1))
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=LR, betas=BETAS, weight_decay=WD)
        self.bf16 = bf16

    def forward_backward(self):
        with self.torch.autocast("cpu", dtype=self.torch.bfloat16, enabled=self.bf16):
            loss = self.model.loss(self.ids, self.pos, self.targets)
        loss.backward()
        return loss

    def __call__(self):
        loss = self.forward_backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        return loss


def torch_state(qkv_model: QkvGPT) -> dict:
    import torch

    return {k: torch.from_dlpack(v).clone() for k, v in qkv_model.state_dict().items()}


# ---- correctness -------------------------------------------------------------------------

CHECKED_GRADS = ["tok_emb.weight", "pos_emb.weight", "blocks.layers.0.self_attn.in_proj_weight",
                 "blocks.layers.3.linear1.weight", "blocks.layers.5.self_attn.out_proj.bias",
                 "blocks.layers.5.norm2.weight", "blocks.norm.weight", "head.weight"]


def check(ids, targets, bf16: bool) -> dict:
    """Loss and gradients of qkv and torch on the same weights, then the loss after one step each."""
    import torch

    q = QkvStep(ids, targets, bf16)
    t = TorchStep(ids, targets, bf16, torch_state(q.model))
    ql = float(torch.from_dlpack(q.forward_backward().value))
    tl = float(t.forward_backward().detach())
    named_t = dict(t.model.named_parameters())
    grads = {}
    for name in CHECKED_GRADS:
        gq = torch.from_dlpack(q.vars[name].grad).clone()
        gt = named_t[name].grad
        scale = float(gt.abs().max())
        grads[name] = {"max_abs_diff": float((gq - gt).abs().max()), "max_abs": scale}
    # One AdamW step each from these gradients, then the next loss.
    q.opt.step({n: v.grad for n, v in q.vars.items() if v.grad is not None})
    q.model.zero_grad()
    t.opt.step()
    t.opt.zero_grad(set_to_none=True)
    ql2 = float(torch.from_dlpack(q.forward_backward().value))
    tl2 = float(t.forward_backward().detach())
    # f32: summation orders differ (oneDNN vs MKL / oneDNN, fused vs unfused attention);
    # bf16: rounding of the products' inputs differs too (torch keeps bf16 activations).
    rtol_loss, rtol_grad = (2e-2, 1e-1) if bf16 else (1e-4, 2e-3)
    ok = abs(ql - tl) <= rtol_loss * abs(tl) and abs(ql2 - tl2) <= rtol_loss * abs(tl2)
    ok = ok and all(g["max_abs_diff"] <= rtol_grad * g["max_abs"] for g in grads.values())
    out = {"dtype": "bf16" if bf16 else "f32", "loss_qkv": ql, "loss_torch": tl, "loss_after_step_qkv": ql2,
           "loss_after_step_torch": tl2, "grads": grads, "rtol_loss": rtol_loss, "rtol_grad_of_max": rtol_grad,
           "ok": ok}
    worst = max(g["max_abs_diff"] / g["max_abs"] for g in grads.values())
    print(f"check {out['dtype']}: loss qkv {ql:.6f} torch {tl:.6f}; after one step {ql2:.6f} / {tl2:.6f}; "
          f"worst grad diff {worst:.2e} of max  -> {'ok' if ok else 'MISMATCH'}", flush=True)
    return out


# ---- memory (fresh process per framework) ------------------------------------------------

CHILD = r"""
import gc, json, resource, sys
sys.path.insert(0, sys.argv[1])
import train_step as ts
which, bf16, threads = sys.argv[2], sys.argv[3] == "1", int(sys.argv[4])

def hwm_kib():  # this process's own peak RSS (VmHWM): exec starts it afresh
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1])

ids, targets = ts.batch()
if which == "qkv":
    import qkv
    qkv.set_num_threads(threads)
    step = ts.QkvStep(ids, targets, bf16)
else:
    import torch
    torch.set_num_threads(threads)
    step = ts.TorchStep(ids, targets, bf16)
gc.collect()
before, hwm_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, hwm_kib()
step()
after, hwm_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, hwm_kib()
print(json.dumps({"before_kib": before, "after_kib": after, "hwm_before_kib": hwm_before,
                  "hwm_after_kib": hwm_after}))
"""


def memory(which: str, bf16: bool, threads: int) -> dict:
    """Run before the parent grows: Linux carries a parent's peak RSS into ru_maxrss across
    fork + exec, so a child of a big parent would report the parent's peak."""
    r = subprocess.run([sys.executable, "-c", CHILD, str(HERE), which, "1" if bf16 else "0", str(threads)],
                       capture_output=True, text=True, check=True, env=dict(os.environ))
    m = json.loads(r.stdout.strip().splitlines()[-1])
    return {"framework": which, "dtype": "bf16" if bf16 else "f32", "threads": threads,
            "step_growth_mib": (m["after_kib"] - m["before_kib"]) / 1024, "peak_rss_mib": m["after_kib"] / 1024,
            "setup_rss_mib": m["before_kib"] / 1024,
            "vmhwm_growth_mib": (m["hwm_after_kib"] - m["hwm_before_kib"]) / 1024}


# ---- main --------------------------------------------------------------------------------


def markdown(result: dict) -> str:
    m = result["machine"]
    v = result["versions"]
    tokens = CFG["batch"] * CFG["context"]
    lines = [
        "# One GPT training step: qkv vs PyTorch eager",
        "",
        f"`{result['command']}` on {m['cpu']} ({m['cores']} cores; {', '.join(m['isa'])}); qkv {v['qkv']}, "
        f"torch {v['torch']}. 1-minute load average {m['loadavg_1m']} before, {result['loadavg_1m_after']} after.",
        "",
        "Model: 6 pre-norm layers, d = 384, 6 heads, context 256, batch 8, character-level vocab 65 "
        "(Tiny Shakespeare), learned positions, causal self-attention, GELU MLP (4x), final LayerNorm, "
        "untied head without bias; 10.8M parameters; the same weights and batch in both. A step is forward, "
        "cross-entropy, backward, AdamW, zero grads. "
        f"Median of {result['method']['reps']} alternating steps after {result['method']['warmup']} warm-up "
        "steps each, one process, same thread count; ratio = qkv tokens/s / torch tokens/s.",
        "",
        "| dtype | threads | qkv step (ms) | torch step (ms) | qkv tokens/s | torch tokens/s | ratio |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result["results"]:
        lines.append(f"| {r['config']['dtype']} | {r['threads']} | {r['qkv_s'] * 1e3:.0f} | {r['peer_s'] * 1e3:.0f} | "
                     f"{tokens / r['qkv_s']:.0f} | {tokens / r['peer_s']:.0f} | {r['ratio']:.2f} |")
    if result.get("memory"):
        lines += ["", "Peak memory, a fresh process per row (2 threads): ru_maxrss after setup (imports, model, "
                  "optimizer, batch), its growth over the first step (activations, gradients, optimizer "
                  "state; VmHWM agrees), and the peak after it.", "",
                  "| framework | dtype | after setup (MiB) | step growth (MiB) | peak RSS (MiB) |",
                  "|---|---|---:|---:|---:|"]
        for r in result["memory"]:
            lines.append(f"| {r['framework']} | {r['dtype']} | {r['setup_rss_mib']:.0f} | "
                         f"{r['step_growth_mib']:.0f} | {r['peak_rss_mib']:.0f} |")
    lines += ["", "Correctness (before timing):", ""]
    for c in result["checks"]:
        worst = max(g["max_abs_diff"] / g["max_abs"] for g in c["grads"].values())
        lines.append(f"- {c['dtype']}: loss qkv {c['loss_qkv']:.6f}, torch {c['loss_torch']:.6f}; after one AdamW "
                     f"step {c['loss_after_step_qkv']:.6f} / {c['loss_after_step_torch']:.6f}; "
                     f"{len(c['grads'])} gradients, worst max |diff| = {worst:.1e} x max |g| "
                     f"({'ok' if c['ok'] else 'MISMATCH'})")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--dtypes", nargs="+", default=["f32", "bf16"], choices=["f32", "bf16"])
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--no-memory", action="store_true")
    ap.add_argument("--out", default=None, help="prefix for .json / .md")
    args = ap.parse_args(argv)

    mem = []
    if not args.no_memory:  # first, while this process is small (see memory())
        for dtype in args.dtypes:
            for which in ("qkv", "torch"):
                r = memory(which, dtype == "bf16", 2)
                mem.append(r)
                print(f"memory {which} {dtype}: setup {r['setup_rss_mib']:.0f} MiB, step growth "
                      f"{r['step_growth_mib']:.0f} MiB (VmHWM {r['vmhwm_growth_mib']:.0f}), "
                      f"peak {r['peak_rss_mib']:.0f} MiB", flush=True)

    ids, targets = batch()
    runner.set_threads(2)
    checks = [check(ids, targets, bf16=d == "bf16") for d in args.dtypes]
    if not all(c["ok"] for c in checks):
        print("qkv and torch disagree: no timing", file=sys.stderr)
        return 1

    bench = runner.Bench("train-step", reps=args.reps, warmup=args.warmup)
    tokens = CFG["batch"] * CFG["context"]
    for dtype in args.dtypes:
        bf16 = dtype == "bf16"
        q = QkvStep(ids, targets, bf16)
        t = TorchStep(ids, targets, bf16, torch_state(q.model))
        for threads in args.threads:
            row = bench.compare("train_step", {"dtype": dtype, "tokens": tokens}, q, t, peer="torch",
                                threads=threads)
            print(f"   tokens/s qkv {tokens / row.qkv_s:.0f}  torch {tokens / row.peer_s:.0f}", flush=True)
    result = bench.to_json()
    result["model"] = CFG
    result["checks"] = checks
    result["memory"] = mem
    md = markdown(result)
    print(md)
    if args.out:
        out = pathlib.Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
        out.with_suffix(".md").write_text(md)
        print("wrote", out.with_suffix(".json"), out.with_suffix(".md"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
