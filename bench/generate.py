#!/usr/bin/env python3
"""Generating 512 tokens with a GPT: the KV cache against recomputing the window (issue 6, item 2).

The model: qkv.nn.GPT, character-level (vocab 65), context 1024, 6 layers, d 384, 6 heads,
learned positions, tied embeddings (10.8M parameters; the nanoGPT Shakespeare-char shape
with a longer context), nanoGPT's initialisation from a fixed seed. A 16-token prompt,
then 512 greedy tokens (temperature 0), so every step's window (16 .. 527 tokens) fits
the context and the uncached path recomputes the whole prefix for every token, as
nanoGPT's generate() does (idx[:, -block_size:]).

Rows (bench/runner.py's rules: same thread count, alternating calls, median):
  qkv cached    GPT.generate(use_cache=True): prefill, then one forward_cached per token
  qkv uncached  GPT.generate(use_cache=False)
  torch cached / uncached  the same weights in a nanoGPT-style torch model (float32,
                F.scaled_dot_product_attention), with a key / value cache (preallocated,
                written in place) or recomputing the window, under torch.no_grad()

Checks before timing: qkv's and torch's logits for the prompt agree within 1e-4 of their
scale, and the tokens each path generates are reported (greedy decoding of a random model
is sensitive to near-ties, so agreement is recorded rather than required past the first
token where two paths' top logits are within 1e-4).

    .venv/bin/python bench/generate.py --out bench/results/generate-2026-11-22
"""

from __future__ import annotations

import argparse
import json
import pathlib
import statistics
import sys

import numpy as np

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import runner  # noqa: E402

CFG = {"vocab_size": 65, "context": 1024, "n_layer": 6, "n_head": 6, "d_model": 384, "dropout": 0.0,
       "bias": True, "tied_embeddings": True, "positions": "learned"}
PROMPT = 16
NEW = 512


def prompt_ids() -> list[int]:
    return [int(t) for t in np.random.default_rng(0).integers(0, CFG["vocab_size"], PROMPT)]


# ---- torch ----------------------------------------------------------------------------------


def torch_model(state: dict, c: dict = CFG):
    import torch
    import torch.nn.functional as F

    d, h = c["d_model"], c["n_head"]

    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.ln_1 = torch.nn.LayerNorm(d)
            self.attn = torch.nn.Module()
            self.attn.c_attn = torch.nn.Linear(d, 3 * d)
            self.attn.c_proj = torch.nn.Linear(d, d)
            self.ln_2 = torch.nn.LayerNorm(d)
            self.mlp = torch.nn.Module()
            self.mlp.c_fc = torch.nn.Linear(d, 4 * d)
            self.mlp.c_proj = torch.nn.Linear(4 * d, d)

        def forward(self, x, cache=None, start=0):
            b, t, _ = x.shape
            p = c.get("dropout", 0.0) if self.training else 0.0
            q, k, v = self.attn.c_attn(self.ln_1(x)).split(d, dim=2)
            q, k, v = (z.view(b, t, h, d // h).transpose(1, 2) for z in (q, k, v))
            if cache is not None:  # [B, H, capacity, Dh] each, written in place
                cache[0][:, :, start:start + t] = k
                cache[1][:, :, start:start + t] = v
                k, v = cache[0][:, :, :start + t], cache[1][:, :, :start + t]
            # One query against the cache sees every key; a prefill is causal (from position 0).
            y = F.scaled_dot_product_attention(q, k, v, is_causal=t > 1, dropout_p=p)
            x = x + F.dropout(self.attn.c_proj(y.transpose(1, 2).reshape(b, t, d)), p)
            return x + F.dropout(self.mlp.c_proj(F.gelu(self.mlp.c_fc(self.ln_2(x)), approximate="tanh")), p)

    class GPT(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.transformer = torch.nn.ModuleDict(dict(
                wte=torch.nn.Embedding(c["vocab_size"], d), wpe=torch.nn.Embedding(c["context"], d),
                h=torch.nn.ModuleList(Block() for _ in range(c["n_layer"])), ln_f=torch.nn.LayerNorm(d)))

        def forward(self, idx, caches=None, start=0):
            t = idx.shape[1]
            x = self.transformer.wte(idx) + self.transformer.wpe(torch.arange(start, start + t))
            for i, block in enumerate(self.transformer.h):
                x = block(x, None if caches is None else caches[i], start)
            return self.transformer.ln_f(x[:, -1:]) @ self.transformer.wte.weight.T  # last position only

        def all_logits(self, idx):
            x = self.transformer.wte(idx) + self.transformer.wpe(torch.arange(idx.shape[1]))
            x = F.dropout(x, c.get("dropout", 0.0) if self.training else 0.0)
            for block in self.transformer.h:
                x = block(x)
            return self.transformer.ln_f(x) @ self.transformer.wte.weight.T

        def loss(self, idx, targets):
            logits = self.all_logits(idx).float()
            return F.cross_entropy(logits.view(-1, logits.shape[-1]), targets.view(-1), ignore_index=-1)

        @torch.no_grad()
        def generate(self, prompt: list[int], new: int, use_cache: bool) -> list[int]:
            seq = torch.tensor([prompt])
            if not use_cache:
                for _ in range(new):
                    logits = self(seq[:, -c["context"]:])
                    seq = torch.cat([seq, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
                return seq[0, len(prompt):].tolist()
            shape = (1, h, c["context"], d // h)
            caches = [(torch.empty(shape), torch.empty(shape)) for _ in range(c["n_layer"])]
            logits = self(seq, caches, 0)
            out = []
            for i in range(new):
                token = logits[:, -1].argmax(-1, keepdim=True)
                out.append(int(token))
                if i + 1 < new:
                    logits = self(token, caches, len(prompt) + i)
            return out

    model = GPT()
    model.load_state_dict({k: torch.from_dlpack(v).clone() for k, v in state.items()}, strict=True)
    return model


# ---- checks ---------------------------------------------------------------------------------


def agreement(a: list[int], b: list[int]) -> int:
    """How many leading tokens two runs share."""
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def check(model, ref, prompt) -> dict:
    import torch

    import qkv

    ids = np.array([prompt], dtype=np.int64)
    ours = torch.from_dlpack(model(qkv.from_numpy(ids)).value).clone()
    with torch.no_grad():
        theirs = ref.all_logits(torch.from_numpy(ids))
    err = float((ours - theirs).abs().max())
    scale = float(theirs.abs().max())
    runs = {
        "qkv_cached": model.generate(prompt, max_new_tokens=NEW, temperature=0.0, use_cache=True),
        "qkv_uncached": model.generate(prompt, max_new_tokens=NEW, temperature=0.0, use_cache=False),
        "torch_cached": ref.generate(prompt, NEW, use_cache=True),
        "torch_uncached": ref.generate(prompt, NEW, use_cache=False),
    }
    base = runs["qkv_cached"]
    out = {"prompt_logits_max_abs_diff": err, "prompt_logits_scale": scale, "ok": err <= 1e-4 * scale,
           "tokens_generated": {k: len(v) for k, v in runs.items()},
           "leading_tokens_equal_to_qkv_cached": {k: agreement(base, v) for k, v in runs.items()}}
    print(f"check: prompt logits max |diff| {err:.2e} (scale {scale:.2f}); tokens equal to qkv cached: "
          f"{out['leading_tokens_equal_to_qkv_cached']}", flush=True)
    return out


# ---- a training step at the 30-minute training's shape (context for the numbers above) -------

TRAIN = {"vocab_size": 65, "context": 128, "n_layer": 4, "n_head": 4, "d_model": 256, "dropout": 0.0,
         "bias": True, "tied_embeddings": True, "positions": "learned", "batch": 32}
LR, BETAS, WD = 3e-4, (0.9, 0.95), 0.1


def train_step_row(threads: int, reps: int, warmup: int, bf16: bool = False, dropout: float = 0.0) -> dict:
    """Forward, mean cross-entropy, backward, AdamW, zero grads: qkv.nn.GPT.loss vs the torch model
    from the same weights on the same batch; tokens/s = B * T / median step time. bf16: under
    qkv.autograd.autocast / torch.autocast("cpu", bfloat16)."""
    import contextlib

    import torch

    import qkv
    import qkv.autograd
    import qkv.nn as nn

    c = {k: v for k, v in TRAIN.items() if k != "batch"}
    c["dropout"] = dropout
    q_cast = (lambda: qkv.autograd.autocast()) if bf16 else contextlib.nullcontext
    t_cast = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if bf16 else contextlib.nullcontext
    model = nn.GPT(nn.GPTConfig(**c), seed=1)
    ref = torch_model(model.state_dict(), c).train()
    rng = np.random.default_rng(1)
    shape = (TRAIN["batch"], TRAIN["context"])
    ids, targets = rng.integers(0, c["vocab_size"], shape), rng.integers(0, c["vocab_size"], shape)
    q_ids, q_targets = qkv.from_numpy(ids), qkv.from_numpy(targets)
    t_ids, t_targets = torch.from_numpy(ids), torch.from_numpy(targets)
    named = model.named_parameters()
    q_opt = qkv.AdamW(model.state_dict(), lr=LR, betas=BETAS, weight_decay=WD)
    t_opt = torch.optim.AdamW(ref.parameters(), lr=LR, betas=BETAS, weight_decay=WD)
    model.eval(), ref.eval()  # the check without dropout
    with q_cast():
        ql = float(torch.from_dlpack(model.loss(q_ids, q_targets).value))
    with t_cast():
        tl = float(ref.loss(t_ids, t_targets).detach())
    assert abs(ql - tl) <= (1e-2 if bf16 else 1e-4) * abs(tl), (ql, tl)
    model.train(), ref.train()

    def qkv_step():
        with q_cast():
            loss = model.loss(q_ids, q_targets)
        loss.backward()
        q_opt.step({n: v.grad for n, v in named if v.grad is not None})
        model.zero_grad()

    def torch_step():
        with t_cast():
            loss = ref.loss(t_ids, t_targets)
        loss.backward()
        t_opt.step()
        t_opt.zero_grad(set_to_none=True)

    runner.set_threads(threads)
    t = timed({"qkv": qkv_step, "torch": torch_step}, reps, warmup)
    tokens = TRAIN["batch"] * TRAIN["context"]
    row = {"threads": threads, "dtype": "bf16" if bf16 else "f32", "dropout": dropout, "loss_qkv": ql, "loss_torch": tl, "times": t,
           "qkv_tokens_per_s": tokens / t["qkv"]["median_s"], "torch_tokens_per_s": tokens / t["torch"]["median_s"]}
    print(f"train step, {row['dtype']}, dropout {dropout}, threads {threads}: qkv {row['qkv_tokens_per_s']:.0f} tokens/s, "
          f"torch {row['torch_tokens_per_s']:.0f} tokens/s", flush=True)
    return row


# ---- main -----------------------------------------------------------------------------------


def timed(fns: dict, reps: int, warmup: int) -> dict:
    names = list(fns)
    times = runner.time_alternating([fns[n] for n in names], reps, warmup)
    return {n: {"median_s": statistics.median(t), "min_s": min(t), "max_s": max(t), "samples_s": t}
            for n, t in zip(names, times)}


def markdown(result: dict) -> str:
    m, v = result["machine"], result["versions"]
    lines = [
        "# Generating 512 tokens: KV cache vs recomputation",
        "",
        f"`{result['command']}` on {m['cpu']} ({m['cores']} cores; {', '.join(m['isa'])}); qkv {v['qkv']}, "
        f"torch {v['torch']}. 1-minute load average {m['loadavg_1m']} before, {result['loadavg_1m_after']} after "
        "(other engineers' builds share this 2-core machine; a load near 2 makes the 2-thread times unreliable).",
        "",
        f"Model: GPT, vocab {CFG['vocab_size']}, context {CFG['context']}, {CFG['n_layer']} layers, "
        f"d {CFG['d_model']}, {CFG['n_head']} heads, learned positions, tied embeddings "
        f"({result['parameters'] / 1e6:.1f}M parameters), nanoGPT's initialisation. A {PROMPT}-token prompt, "
        f"then {NEW} greedy tokens; uncached = the whole window recomputed for every token (nanoGPT's "
        "generate). torch: the same weights in a nanoGPT-style float32 model with scaled_dot_product_attention, "
        "under no_grad; its cache is preallocated and written in place. Median of the alternating "
        "repetitions (cached: "
        f"{result['method']['reps_cached']}, after {result['method']['warmup']} warm-up; uncached: "
        f"{result['method']['reps_uncached']}, no warm-up beyond the cached rounds); the fastest sample of each "
        "is in the JSON.",
        "",
        "| threads | qkv cached (s) | qkv uncached (s) | speed-up | qkv cached tokens/s | torch cached (s) "
        "| torch uncached (s) | torch speed-up | qkv vs torch, cached | qkv vs torch, uncached |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result["results"]:
        t = r["times"]
        qc, qu = t["qkv_cached"]["median_s"], t["qkv_uncached"]["median_s"]
        tc, tu = t["torch_cached"]["median_s"], t["torch_uncached"]["median_s"]
        lines.append(f"| {r['threads']} | {qc:.3f} | {qu:.2f} | **{qu / qc:.1f}x** | {NEW / qc:.0f} | {tc:.3f} | "
                     f"{tu:.2f} | {tu / tc:.1f}x | {tc / qc:.2f}x | {tu / qu:.2f}x |")
    if result.get("train_step"):
        tc = TRAIN
        lines += ["", f"For context, one training step at the shape the 30-minute Tiny Shakespeare run uses: "
                  f"{tc['n_layer']} layers, d {tc['d_model']}, {tc['n_head']} heads, context {tc['context']}, "
                  f"batch {tc['batch']}, vocab {tc['vocab_size']} (forward, cross-entropy, backward, "
                  "AdamW, zero grads; qkv.nn.GPT.loss vs the torch model above with the same dropout sites, "
                  "same weights and batch, alternating, median; bf16 = qkv.autograd.autocast / "
                  "torch.autocast):", "",
                  "| dtype | dropout | threads | qkv step (ms) | torch step (ms) | qkv tokens/s | torch tokens/s "
                  "| ratio |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|"]
        for r in result["train_step"]:
            q, t = r["times"]["qkv"]["median_s"], r["times"]["torch"]["median_s"]
            lines.append(f"| {r['dtype']} | {r['dropout']} | {r['threads']} | {q * 1e3:.0f} | {t * 1e3:.0f} | {r['qkv_tokens_per_s']:.0f} | "
                         f"{r['torch_tokens_per_s']:.0f} | {t / q:.2f} |")
    c = result["check"]
    lines += ["", "speed-up = uncached / cached time; qkv vs torch = torch time / qkv time (> 1: qkv is faster).",
              "", f"Check: prompt logits qkv vs torch max |diff| {c['prompt_logits_max_abs_diff']:.1e} "
              f"(scale {c['prompt_logits_scale']:.2f}); leading generated tokens equal to qkv cached's: "
              + ", ".join(f"{k} {n}/{NEW}" for k, n in c["leading_tokens_equal_to_qkv_cached"].items()) + "."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, nargs="+", default=[2, 1])
    ap.add_argument("--reps-cached", type=int, default=5)
    ap.add_argument("--reps-uncached", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--no-torch", action="store_true", help="time qkv alone")
    ap.add_argument("--train-reps", type=int, default=7, help="training-step repetitions (0: skip)")
    ap.add_argument("--out", default=None, help="prefix for .json / .md")
    args = ap.parse_args(argv)

    import qkv
    import qkv.nn as nn

    bench = runner.Bench("generate")
    model = nn.GPT(nn.GPTConfig(**CFG), seed=0)
    model.eval()
    ref = torch_model(model.state_dict()).eval()
    prompt = prompt_ids()
    runner.set_threads(2)
    checked = check(model, ref, prompt)
    if not checked["ok"]:
        print("qkv and torch disagree on the prompt's logits: no timing", file=sys.stderr)
        return 1

    def qkv_run(use_cache):
        return lambda: model.generate(prompt, max_new_tokens=NEW, temperature=0.0, use_cache=use_cache)

    def torch_run(use_cache):
        return lambda: ref.generate(prompt, NEW, use_cache)

    rows = []
    for threads in args.threads:
        runner.set_threads(threads)
        cached = {"qkv_cached": qkv_run(True)}
        uncached = {"qkv_uncached": qkv_run(False)}
        if not args.no_torch:
            cached["torch_cached"] = torch_run(True)
            uncached["torch_uncached"] = torch_run(False)
        times = timed(cached, args.reps_cached, args.warmup)
        # Each uncached call is 512 forwards of the growing window: no separate warm-up.
        times.update(timed(uncached, args.reps_uncached, 0))
        qc, qu = times["qkv_cached"]["median_s"], times["qkv_uncached"]["median_s"]
        print(f"threads {threads}: qkv cached {qc:.3f} s ({NEW / qc:.0f} tokens/s), uncached {qu:.2f} s: "
              f"speed-up {qu / qc:.1f}x", flush=True)
        if not args.no_torch:
            tc, tu = times["torch_cached"]["median_s"], times["torch_uncached"]["median_s"]
            print(f"           torch cached {tc:.3f} s, uncached {tu:.2f} s; qkv vs torch {tc / qc:.2f}x cached, "
                  f"{tu / qu:.2f}x uncached", flush=True)
        rows.append({"threads": threads, "times": times, "speedup": qu / qc})
    train = [train_step_row(t, args.train_reps, 2, bf16, dropout) for bf16, dropout in ((False, 0.0), (True, 0.1))
             for t in args.threads] if args.train_reps else []
    result = bench.to_json()
    result.pop("results")
    result["method"] = {"reps_cached": args.reps_cached, "reps_uncached": args.reps_uncached,
                        "warmup": args.warmup, "statistic": "median",
                        "order": "alternating, order swapped every round (runner.time_alternating)"}
    result.update({"model": CFG, "parameters": model.num_parameters(), "prompt_tokens": PROMPT,
                   "new_tokens": NEW, "check": checked, "results": rows, "train_step": train,
                   "train_model": TRAIN})
    if args.no_torch:
        print(json.dumps(rows, indent=1))
        return 0
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
