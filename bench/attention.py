#!/usr/bin/env python3
"""qkv.attention (fused forward) against torch's scaled_dot_product_attention.

The forward configurations of docs/BENCHMARKS.md, side by side in one process
with bench/runner.py's rules: same thread count for both (1 and 2), alternating
calls, median after warm-up; f32 and bf16 (both libraries get bf16 inputs; qkv
returns f32, torch bf16). Per row: median ms of each, GFLOP/s of each (forward
FLOPs = 4 B H Lq Lk D, halved for causal), the ratio torch time / qkv time, and
qkv's GFLOP/s as a fraction of the f32 GEMM rate measured in the same run
(qkv.matmul, oneDNN, on a [4096, 64] x [64, 4096] f32 product at the same thread
count; torch.matmul's rate is recorded beside it). Decode rows also give GB/s
= bytes of K and V read / time. The machine's load average is recorded before
and after.

Pruned to run in minutes on a 2-core machine (the full table would take hours):
  bert   B 8 and 32, H 12, D 64, a subset of L in {128, 384, 512}, with a key
         padding mask (random lengths in [L/2, L]; torch gets it as a bool
         attn_mask [B, 1, 1, L]);
  sweep  L 512 .. 4096 doubling, D 64 and 128, causal and not, with B H scaled
         down from (16384/L) x (2048/D) to B = 1, H = 256/D (same per-head
         shapes, 1/(16384/L * 8) of the work: the throughput is per FLOP);
  decode 1 query vs KV 512 .. 32k, Hq 32, Hkv 8, D 128 (torch: enable_gqa).

    .venv/bin/python bench/attention.py --threads 1,2 --dtypes f32,bf16 --out bench/results/attention-forward-DATE
"""

from __future__ import annotations

import argparse
import datetime
import os
import pathlib
import statistics
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import runner  # noqa: E402

import qkv  # noqa: E402

TORCH_DTYPE = {"f32": torch.float32, "bf16": torch.bfloat16}


def configs(quick: bool):
    """(name, dict(B, H, Hkv, Lq, Lk, D, causal, padding), reps) in run order."""
    out = []

    def add(name, B, H, Lq, Lk, D, *, Hkv=None, causal=False, padding=False, backward=False, reps=20):
        out.append((name, dict(B=B, H=H, Hkv=Hkv or H, Lq=Lq, Lk=Lk, D=D, causal=causal, padding=padding,
                               backward=backward), reps))

    add("torch-ref", 1, 25, 1024, 1024, 64)
    for B, L in ([(8, 128), (32, 384)] if quick else [(8, 128), (8, 512), (32, 128), (32, 384)]):
        add("bert", B, 12, L, L, 64, padding=True)
    add("gpt2", 1, 12, 1024, 1024, 64, causal=True)
    # Forward + backward (training): the torch-ref and gpt2 shapes.
    add("fwd+bwd", 1, 25, 1024, 1024, 64, backward=True, reps=7)
    add("fwd+bwd", 1, 12, 1024, 1024, 64, causal=True, backward=True, reps=9)
    for D in (64, 128):
        for L in ([512, 2048] if quick else [512, 1024, 2048, 4096]):
            for causal in (False, True):
                add("sweep", 1, 256 // D, L, L, D, causal=causal, reps=7 if L >= 4096 else 11 if L >= 2048 else 20)
    for Lk in ([512, 8192] if quick else [512, 2048, 8192, 32768]):
        add("decode", 1, 32, 1, Lk, 128, Hkv=8, reps=30)
    return out


def make_case(cfg, dtype, seed=0):
    """torch inputs [B, H, L, D] in `dtype`, qkv views of them, and the two callables."""
    g = torch.Generator().manual_seed(seed)
    B, H, Hkv, Lq, Lk, D = (cfg[k] for k in ("B", "H", "Hkv", "Lq", "Lk", "D"))
    td = TORCH_DTYPE[dtype]
    q = torch.randn(B, H, Lq, D, generator=g).to(td)
    k = torch.randn(B, Hkv, Lk, D, generator=g).to(td)
    v = torch.randn(B, Hkv, Lk, D, generator=g).to(td)
    qq, kq, vq = qkv.from_dlpack(q), qkv.from_dlpack(k), qkv.from_dlpack(v)
    gqa = Hkv != H
    kpm = kpm_q = attn_mask = None
    if cfg["padding"]:
        lengths = torch.randint(Lk // 2, Lk + 1, (B,), generator=g)
        kpm = torch.arange(Lk).unsqueeze(0) >= lengths.unsqueeze(1)  # True = padding
        kpm_q = qkv.from_dlpack(kpm)
        attn_mask = (~kpm)[:, None, None, :]  # True = may attend

    if cfg.get("backward"):
        grad = torch.randn(B, H, Lq, D, generator=g).to(td)
        grad_q = qkv.from_dlpack(grad)
        qt, kt, vt = (x.clone().requires_grad_() for x in (q, k, v))

        def qkv_train():  # forward with the lse, then dQ, dK, dV
            out, lse = qkv.attention(qq, kq, vq, causal=cfg["causal"], return_lse=True)
            qkv.attention_backward(grad_q, qq, kq, vq, output=out, lse=lse, causal=cfg["causal"])
            return out

        def torch_train():
            for x in (qt, kt, vt):
                x.grad = None
            out = F.scaled_dot_product_attention(qt, kt, vt, is_causal=cfg["causal"], enable_gqa=gqa)
            out.backward(grad)
            return out.detach()

        return qkv_train, torch_train

    def qkv_fn():
        return qkv.attention(qq, kq, vq, causal=cfg["causal"], key_padding_mask=kpm_q)

    def torch_fn():
        return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=cfg["causal"],
                                              enable_gqa=gqa)

    return qkv_fn, torch_fn


def check_same(qkv_fn, torch_fn, dtype, what):
    """A benchmark of a wrong answer is no benchmark: both agree first."""
    a = torch.from_dlpack(qkv_fn()).float()
    b = torch_fn().float()
    tol = 2e-2 if dtype == "bf16" else 1e-4
    torch.testing.assert_close(a, b, rtol=tol, atol=tol, msg=lambda m: f"{what}: {m}")


GEMM_SHAPES = {  # name: (m, k, n); the first is the denominator of "of GEMM"
    "m2048_n2048_k2048": (2048, 2048, 2048),  # square sgemm: the machine's matmul rate
    "m4096_n64_k4096": (4096, 4096, 64),  # [4096, 4096] x [4096, 64]: P V-like, compute-bound
    "m4096_n4096_k64": (4096, 64, 4096),  # [4096, 64] x [64, 4096]: Q K^T-like, bound by writing C
}


def time_gemm(threads: int, reps: int = 15) -> dict:
    """GEMM rates (GFLOP/s) at this thread count: qkv.matmul and torch.matmul, f32 and bf16."""
    runner.set_threads(threads)
    out = {}
    for shape, (m, k, n) in GEMM_SHAPES.items():
        for dtype in ("f32", "bf16"):
            g = torch.Generator().manual_seed(1)
            a = torch.randn(m, k, generator=g).to(TORCH_DTYPE[dtype])
            b = torch.randn(k, n, generator=g).to(TORCH_DTYPE[dtype])
            aq, bq = qkv.from_dlpack(a), qkv.from_dlpack(b)
            tq, tt = runner.time_alternating([lambda: qkv.matmul(aq, bq), lambda: torch.matmul(a, b)], reps, 3)
            out[f"qkv_matmul_{dtype}_{shape}"] = 2.0 * m * n * k / statistics.median(tq) / 1e9
            out[f"torch_matmul_{dtype}_{shape}"] = 2.0 * m * n * k / statistics.median(tt) / 1e9
    print(f"gemm t={threads}: " + ", ".join(f"{k} {v:.1f}" for k, v in out.items()), flush=True)
    return out


GEMM_KEY = "qkv_matmul_f32_m2048_n2048_k2048"


def time_bandwidth(threads: int, reps: int = 9) -> float:
    """The machine's read bandwidth (GB/s) at this thread count: the faster of qkv.sum and
    torch.sum over a 512 MiB f32 array, median of `reps` (the denominator for decode)."""
    runner.set_threads(threads)
    a = torch.randn(1 << 27)
    aq = qkv.from_dlpack(a)
    tq, tt = runner.time_alternating([lambda: qkv.sum(aq), lambda: a.sum()], reps, 2)
    gbps = a.numel() * 4 / min(statistics.median(tq), statistics.median(tt)) / 1e9
    print(f"read bandwidth t={threads}: {gbps:.1f} GB/s", flush=True)
    return gbps


NOTES = [
    "Notes: bert rows carry a key padding mask (random lengths in [L/2, L]; torch gets it as a bool attn_mask "
    "[B, 1, 1, L]). sweep rows keep the per-head shapes of BENCHMARKS.md's sweep but run B = 1, H = 256/D instead "
    "of B = 16384/L, H = 2048/D, so the whole run takes minutes; L stops at 4096. decode: 1 query, 32 query heads "
    "on 8 K/V heads (torch: enable_gqa=True); GB/s = bytes of K and V / time. Every row first checks that both "
    "libraries give the same output (rtol = atol = 1e-4 for f32, 2e-2 for bf16).",
]


def qkv_commit() -> str:
    """The git commit of the tree the installed qkv was built from (+ '-dirty' if the tree has changes)."""
    import subprocess

    root = pathlib.Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True,
                              text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True).stdout.strip()
        return head + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def qkv_built() -> str:
    """When the installed extension module was written (UTC)."""
    try:
        so = next(pathlib.Path(qkv.__file__).parent.glob("_qkv*.so"))
        return datetime.datetime.fromtimestamp(so.stat().st_mtime, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    except (StopIteration, OSError):
        return "unknown"


class AttentionBench(runner.Bench):
    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.gemm: dict[int, dict] = {}
        self.bandwidth: dict[int, float] = {}
        self.wall_s = None

    def to_json(self) -> dict:
        js = super().to_json()
        js["gemm_reference"] = {
            "problem": "m=4096 n=64 k=4096 ([4096, 4096] x [4096, 64]) and m=4096 n=4096 k=64; f32 and bf16",
            "fraction_of": GEMM_KEY + " (qkv.matmul, oneDNN) at the row's thread count",
            "rates": {str(t): r for t, r in self.gemm.items()},
        }
        js["read_bandwidth_gbps"] = {str(t): b for t, b in self.bandwidth.items()}
        js["method"]["flops"] = "4 B H Lq Lk D, halved for causal; x 3.5 for fwd+bwd (backward = 2.5 x forward)"
        js["method"]["reps"] = "per row (see results[].reps); warm-up 2 calls each"
        js["wall_s"] = self.wall_s
        js["qkv_commit"] = qkv_commit()
        js["qkv_built"] = qkv_built()
        return js

    def to_markdown(self) -> str:
        m = self.machine_before
        v = runner.versions()
        after = runner.machine()["loadavg_1m"]
        lines = [
            "# attention: qkv.attention (forward; fwd+bwd rows: and attention_backward) vs torch SDPA, side by side",
            "",
            f"Command: `{self.command}`",
            "",
            f"{m['cpu']} ({m['cores']} cores; {', '.join(m['isa'])}); qkv {v['qkv']} (source tree at {qkv_commit()} "
            f"when run; extension built {qkv_built()}), "
            f"torch {v['torch']}. "
            "Same thread count for both; median of alternating calls after 2 warm-up calls "
            "(repetitions per row in the JSON); ratio = torch time / qkv time (> 1: qkv faster). "
            "GFLOP/s from 4·B·H·Lq·Lk·D (halved for causal). "
            "'of GEMM' = qkv's GFLOP/s / the f32 sgemm rate of qkv.matmul (oneDNN) on 2048 x 2048 x 2048 "
            "at the same thread count, measured in this run. 'of BW' (decode) = qkv's GB/s of K and V read / "
            "the read bandwidth measured in this run (the faster of qkv.sum and torch.sum over 512 MiB): "
            + ", ".join(f"{b:.1f} GB/s at {t} thread{'s' if t > 1 else ''}" for t, b in self.bandwidth.items())
            + ". fwd+bwd rows time a forward (with the lse) and the backward of dQ, dK, dV; FLOPs 3.5 x forward. "
            "bf16: both get bf16 inputs (qkv returns f32, torch bf16). "
            f"1-minute load average {m['loadavg_1m']} before, {after} after, on {m['cores']} cores"
            f"{'' if self.wall_s is None else f'; {self.wall_s:.0f} s in all'}.",
            "",
            "GEMM reference (GFLOP/s, median of 15; m x n x k):",
            "",
            "| threads | shape | qkv.matmul f32 | qkv.matmul bf16 | torch.matmul f32 | torch.matmul bf16 |",
            "|---:|---|---:|---:|---:|---:|",
            *(f"| {t} | {shape.replace('_', ' ')} | {r['qkv_matmul_f32_' + shape]:.0f} | {r['qkv_matmul_bf16_' + shape]:.0f} | "
              f"{r['torch_matmul_f32_' + shape]:.0f} | {r['torch_matmul_bf16_' + shape]:.0f} |"
              for t, r in self.gemm.items() for shape in GEMM_SHAPES),
            "",
            "| config | B | H (kv) | Lq | Lk | D | mask | dtype | thr | qkv ms | torch ms | qkv GFLOP/s "
            "| torch GFLOP/s | ratio | of GEMM | qkv GB/s | torch GB/s | of BW |",
            "|---|---:|---:|---:|---:|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for r in self.rows:
            c, e = r.config, r.extra
            heads = f"{c['H']}" + (f" ({c['Hkv']})" if c["Hkv"] != c["H"] else "")
            mask = "causal" if c["causal"] else "key padding" if c["padding"] else ""
            slow = (c["dtype"] == "f32" and r.ratio < 1.5) or (c["dtype"] == "bf16" and r.ratio < 1.3)
            ratio = f"**{r.ratio:.2f}**" if slow else f"{r.ratio:.2f}"
            gb = (f"{r.gbps:.1f} | {e['torch_gbps']:.1f} | {e['frac_bandwidth']:.2f}") if r.gbps else " | | "
            lines.append(
                f"| {r.op} | {c['B']} | {heads} | {c['Lq']} | {c['Lk']} | {c['D']} | {mask} | {c['dtype']} | "
                f"{r.threads} | {r.qkv_s * 1e3:.3f} | {r.peer_s * 1e3:.3f} | {r.gflops:.1f} | "
                f"{e['torch_gflops']:.1f} | {ratio} | {e['frac_gemm']:.2f} | {gb} |")
        lines += ["", "Bold ratio: below 1.5 (f32) or 1.3 (bf16).", "", *NOTES]
        return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", default="1,2", help="comma-separated thread counts")
    parser.add_argument("--dtypes", default="f32,bf16", help="comma-separated: f32, bf16")
    parser.add_argument("--quick", action="store_true", help="a few configurations, fewer repetitions")
    parser.add_argument("--only", nargs="*", help="config names to run (torch-ref bert gpt2 sweep decode)")
    parser.add_argument("--out", help="write PREFIX.json and PREFIX.md "
                        "(default: bench/results/attention-forward-DATE)")
    args = parser.parse_args(argv)
    threads = [int(t) for t in args.threads.split(",")]
    dtypes = args.dtypes.split(",")
    assert set(dtypes) <= set(TORCH_DTYPE), dtypes

    print(f"load average before: {os.getloadavg()}", flush=True)
    start = time.perf_counter()
    command = " ".join([os.path.relpath(sys.executable)] + sys.argv)
    bench = AttentionBench("attention-forward", reps=0, warmup=2, command=command)
    for t in threads:
        bench.gemm[t] = time_gemm(t, reps=5 if args.quick else 15)
        bench.bandwidth[t] = time_bandwidth(t, reps=5 if args.quick else 9)
    for t in threads:
        for dtype in dtypes:
            for name, cfg, reps in configs(args.quick):
                if args.only and name not in args.only:
                    continue
                runner.set_threads(t)
                qkv_fn, torch_fn = make_case(cfg, dtype)
                check_same(qkv_fn, torch_fn, dtype, f"{name} {cfg}")
                flops = 4.0 * cfg["B"] * cfg["H"] * cfg["Lq"] * cfg["Lk"] * cfg["D"] * (0.5 if cfg["causal"] else 1)
                if cfg["backward"]:
                    flops *= 3.5
                kv_bytes = 2.0 * cfg["B"] * cfg["Hkv"] * cfg["Lk"] * cfg["D"] * (2 if dtype == "bf16" else 4)
                is_decode = name == "decode"
                bench.reps = max(3, reps // 2) if args.quick else reps
                row = bench.compare(name, dict(cfg, dtype=dtype), qkv_fn, torch_fn, peer="torch", threads=t,
                                    flops=flops, bytes_moved=kv_bytes if is_decode else None)
                row.extra.update(
                    torch_gflops=flops / row.peer_s / 1e9,
                    torch_gbps=kv_bytes / row.peer_s / 1e9 if is_decode else None,
                    frac_gemm=row.gflops / bench.gemm[t][GEMM_KEY],
                    frac_bandwidth=row.gbps / bench.bandwidth[t] if is_decode else None,
                    flops=flops,
                    loadavg_1m=round(os.getloadavg()[0], 2),  # other work skews a row: see which
                )
    bench.wall_s = time.perf_counter() - start
    bench.reps = "per row"
    out = args.out or pathlib.Path(__file__).resolve().parent / "results" / (
        f"attention-forward-{datetime.date.today().isoformat()}")
    js, md = bench.write(out)
    print(f"load average after: {os.getloadavg()}")
    print(f"wrote {js} and {md} ({bench.wall_s:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
