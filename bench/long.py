#!/usr/bin/env python3
"""The "long" configuration of docs/BENCHMARKS.md: attention time against length.

Part "scaling": B 1, H 8, D 64, f32, forward, L = 1k ... 64k doubling, for dense
fused attention and every efficient variant of SPEC §3 (sliding window w = 256
and 512 with w/2 keys each side, BigBird with 64-key blocks, Longformer with a
window of 512 and the first 16 tokens global, Linformer with k = 256, linear attention
(elu + 1), Performer with 256 features), each checked once against its own
definition at small size by the test suite, here only timed. Reports the median
time per L, the exponent of a least-squares fit of log time on log L between 4k
and 64k, and the speed-up of each variant over dense at the largest L; writes
a table and a log-log plot (PNG).

Part "bias": the cost of positional biases inside the fused kernel at L = 4096
(B 1, H 8, D 64): ALiBi, T5 buckets and Shaw's key term (and key + value terms)
against plain fused attention, causal and not, 1 and 2 threads, alternating
calls in one process (bench/runner.py's rules).

    .venv/bin/python bench/long.py --out bench/results/long-DATE      # both parts
    .venv/bin/python bench/long.py --part bias --threads 1 2
Needs matplotlib for the plot (pip install matplotlib); without it, no PNG.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import pathlib
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import runner  # noqa: E402

import qkv  # noqa: E402

B, H, D = 1, 8, 64


def _inputs(length: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    return [qkv.from_numpy(rng.standard_normal((B, H, length, D), dtype=np.float32)) for _ in range(3)]


def variants(length: int, q, k, v):
    """name -> zero-argument forward call, for one length."""
    out = {"dense": lambda: qkv.attention(q, k, v)}
    for w in (256, 512):
        mask = qkv.sliding_window_mask(w // 2, w // 2)
        out[f"window {w}"] = lambda m=mask: qkv.attention(q, k, v, mask_mod=m)
    bigbird = qkv.bigbird_mask(64, 3, 2, 3, 0)
    out["bigbird"] = lambda: qkv.attention(q, k, v, mask_mod=bigbird)
    # Global tokens where Longformer puts them: [CLS] and the question, up front.
    longformer = qkv.longformer_mask(256, 256, list(range(16)))
    out["longformer"] = lambda: qkv.attention(q, k, v, mask_mod=longformer)
    kproj = 256
    rng = np.random.default_rng(1)
    e = qkv.from_numpy((rng.standard_normal((kproj, length)) / math.sqrt(kproj)).astype(np.float32))
    f = qkv.from_numpy((rng.standard_normal((kproj, length)) / math.sqrt(kproj)).astype(np.float32))
    out["linformer 256"] = lambda: qkv.linformer_attention(q, k, v, e, f)
    out["linear"] = lambda: qkv.linear_attention(q, k, v)
    w_features = qkv.performer_projection(256, D, 0)
    out["performer 256"] = lambda: qkv.performer_attention(q, k, v, w_features)
    return out


def time_call(fn, reps: int) -> float:
    fn()  # warm-up (primitives, page faults)
    samples = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def fit_exponent(lengths, times, low=4096, high=65536):
    pts = [(math.log(n), math.log(t)) for n, t in zip(lengths, times) if low <= n <= high]
    if len(pts) < 2:
        return None
    xs, ys = zip(*pts)
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    return sum((x - mx) * (y - my) for x, y in pts) / sum((x - mx) ** 2 for x in xs)


def scaling(args) -> dict:
    runner.set_threads(args.scaling_threads)
    lengths = [1024 * 2**i for i in range(int(math.log2(args.max_length // 1024)) + 1)]
    table: dict[str, dict[int, float]] = {}
    for n in lengths:
        q, k, v = _inputs(n)
        for name, fn in variants(n, q, k, v).items():
            if args.only and name not in args.only:
                continue
            # Dense at 64k takes tens of seconds a call: fewer repetitions there.
            reps = args.reps if (name != "dense" or n <= 8192) else max(1, args.reps // 3)
            t = time_call(fn, reps)
            table.setdefault(name, {})[n] = t
            print(f"L={n:6d} {name:14s} {t * 1e3:11.2f} ms", flush=True)
    rows = []
    for name, by_len in table.items():
        ls = sorted(by_len)
        exponent = fit_exponent(ls, [by_len[n] for n in ls])
        top = ls[-1]
        speedup = table["dense"][top] / by_len[top] if "dense" in table and top in table["dense"] else None
        rows.append({"variant": name, "times_s": {str(n): by_len[n] for n in ls},
                     "exponent_4k_64k": exponent, "speedup_vs_dense_at_max_L": speedup})
    return {"threads": args.scaling_threads, "lengths": lengths, "rows": rows}


def plot(result: dict, path: pathlib.Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot (pip install matplotlib)")
        return False
    fig, ax = plt.subplots(figsize=(7.5, 5))
    for row in result["rows"]:
        ls = [int(n) for n in row["times_s"]]
        ax.loglog(ls, [row["times_s"][str(n)] * 1e3 for n in ls], marker="o", label=row["variant"])
    ax.set_xlabel("sequence length L")
    ax.set_ylabel("forward time (ms)")
    ax.set_title(f"qkv attention, B {B} H {H} D {D} f32, {result['threads']} threads")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return True


def bias(args) -> runner.Bench:
    bench = runner.Bench("long-bias", reps=args.reps, warmup=2)
    n = 4096
    q, k, v = _inputs(n)
    rng = np.random.default_rng(2)
    table = qkv.from_numpy(rng.standard_normal((32, H), dtype=np.float32))
    kd = 16
    a_k = qkv.from_numpy((rng.standard_normal((2 * kd + 1, D)) * 0.1).astype(np.float32))
    a_v = qkv.from_numpy((rng.standard_normal((2 * kd + 1, D)) * 0.1).astype(np.float32))
    for threads in args.threads:
        for causal in (False, True):
            plain = lambda c=causal: qkv.attention(q, k, v, causal=c)  # noqa: E731
            cases = {
                "alibi": lambda c=causal: qkv.attention(q, k, v, causal=c,
                                                        score_mod=qkv.alibi_score(qkv.alibi_slopes(H))),
                "t5": lambda c=causal: qkv.attention(q, k, v, causal=c,
                                                     score_mod=qkv.t5_bias_score(table, bidirectional=not c)),
                "shaw key": lambda c=causal: qkv.shaw_attention(q, k, v, key=a_k, max_distance=kd, causal=c),
                "shaw key+value": lambda c=causal: qkv.shaw_attention(q, k, v, key=a_k, value=a_v,
                                                                      max_distance=kd, causal=c),
            }
            for name, fn in cases.items():
                # peer = plain fused attention: ratio = plain / biased (< 1: the bias costs).
                bench.compare(name, {"L": n, "B": B, "H": H, "D": D, "causal": causal}, fn, plain,
                              peer="plain fused", threads=threads)
    return bench


def markdown_scaling(result: dict, command: str, png: str | None) -> str:
    m = runner.machine()
    lengths = result["lengths"]
    lines = [
        "# long: attention time against length",
        "",
        f"`{command}` on {m['cpu']} ({m['cores']} cores), qkv {qkv.__version__}, "
        f"{result['threads']} threads, B {B} H {H} D {D} f32, forward, median ms per call "
        f"(1-minute load average {m['loadavg_1m']} at the end).",
        "",
        "| variant | " + " | ".join(f"{n // 1024}k" for n in lengths) + " | exponent 4k-64k | x dense at max L |",
        "|---|" + "---:|" * (len(lengths) + 2),
    ]
    for row in result["rows"]:
        cells = [f"{row['times_s'][str(n)] * 1e3:.1f}" if str(n) in row["times_s"] else "" for n in lengths]
        e, s = row["exponent_4k_64k"], row["speedup_vs_dense_at_max_L"]
        e_txt = f"{e:.2f}" if e is not None else ""
        s_txt = f"{s:.1f}" if s else ""
        lines.append(f"| {row['variant']} | {' | '.join(cells)} | {e_txt} | {s_txt} |")
    if png:
        lines += ["", f"![time against length]({png})"]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--part", choices=["scaling", "bias", "both"], default="both")
    ap.add_argument("--max-length", type=int, default=65536)
    ap.add_argument("--scaling-threads", type=int, default=2)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="for the bias part")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--only", nargs="*", help="scaling: only these variants")
    ap.add_argument("--out", help="PREFIX: writes PREFIX-scaling.{json,md,png} and PREFIX-bias.{json,md}")
    args = ap.parse_args(argv)
    command = " ".join([pathlib.Path(sys.executable).name] + sys.argv)
    out = pathlib.Path(args.out or pathlib.Path(__file__).resolve().parent / "results" /
                       f"long-{datetime.date.today().isoformat()}")
    out.parent.mkdir(parents=True, exist_ok=True)
    if args.part in ("bias", "both"):
        js, md = bias(args).write(out.parent / f"{out.name}-bias")
        print(f"wrote {js} and {md}")
    if args.part in ("scaling", "both"):
        result = scaling(args)
        result.update(command=command, machine=runner.machine(), versions=runner.versions(),
                      date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))
        png = out.parent / f"{out.name}-scaling.png"
        has_png = plot(result, png)
        (out.parent / f"{out.name}-scaling.json").write_text(json.dumps(result, indent=1) + "\n")
        (out.parent / f"{out.name}-scaling.md").write_text(
            markdown_scaling(result, command, png.name if has_png else None))
        print(f"wrote {out.parent / (out.name + '-scaling')}.{{json,md{',png' if has_png else ''}}}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
