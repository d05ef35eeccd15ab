#!/usr/bin/env python3
"""Side-by-side timing of qkv against a named peer, in one process.

A library for every Python benchmark of qkv, and a CLI with the benchmarks
themselves. The rules (docs/BENCHMARKS.md): both callables run in the same
process with the same thread count, alternating (qkv, peer, qkv, peer, ...)
after a warm-up, and the median of the repetitions is reported; the ratio of
the medians is the claim, never a time alone.

    import runner
    bench = runner.Bench("ops")
    bench.compare("softmax", {"shape": [64, 1024]}, qkv_fn, torch_fn, peer="torch",
                  threads=2, flops=None, bytes_moved=4 * 64 * 1024 * 2)
    bench.write("bench/results/ops-2026-11-22")  # .json and .md

CLI:  python3 bench/runner.py ops [--threads 1 2] [--reps 30] [--out PREFIX]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import platform
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Callable


def cpu_model() -> str:
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine() -> dict:
    flags = ""
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = line
                break
    except OSError:
        pass
    isa = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f" {f}" in flags]
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "isa": isa,
        "platform": platform.platform(),
        "python": platform.python_version(),
        # Other work on a shared machine skews multi-threaded times most: record it.
        "loadavg_1m": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
    }


def versions() -> dict:
    out = {}
    for name in ("qkv", "torch", "numpy"):
        try:
            out[name] = __import__(name).__version__
        except ImportError:
            out[name] = None
    return out


def set_threads(n: int) -> None:
    """The same thread count for qkv and every peer that has one."""
    import qkv

    qkv.set_num_threads(n)
    try:
        import torch

        torch.set_num_threads(n)
    except ImportError:
        pass


def time_alternating(fns: list[Callable[[], object]], reps: int, warmup: int, inner: int = 1) -> list[list[float]]:
    """Seconds per call of each fn; rounds alternate fns (and swap the order each round)."""
    for _ in range(warmup):
        for fn in fns:
            fn()
    times: list[list[float]] = [[] for _ in fns]
    order = list(range(len(fns)))
    for r in range(reps):
        for i in order if r % 2 == 0 else reversed(order):
            fn = fns[i]
            start = time.perf_counter()
            for _ in range(inner):
                fn()
            times[i].append((time.perf_counter() - start) / inner)
    return times


def calibrate_inner(fn: Callable[[], object], target_s: float = 2e-3) -> int:
    """Calls per sample so one sample takes about target_s (short ops are noisy)."""
    start = time.perf_counter()
    fn()
    once = max(time.perf_counter() - start, 1e-7)
    return max(1, min(10_000, int(target_s / once)))


@dataclass
class Row:
    op: str
    config: dict
    threads: int
    peer: str
    qkv_s: float  # median seconds per call
    peer_s: float
    ratio: float  # peer_s / qkv_s: > 1 means qkv is faster
    qkv_iqr_s: float
    peer_iqr_s: float
    reps: int
    inner: int
    gflops: float | None = None  # qkv's rate, when flops were given
    gbps: float | None = None  # qkv's rate, when bytes were given
    extra: dict = field(default_factory=dict)


def _iqr(xs: list[float]) -> float:
    q = statistics.quantiles(xs, n=4) if len(xs) >= 2 else [xs[0]] * 3
    return q[2] - q[0]


class Bench:
    def __init__(self, name: str, reps: int = 30, warmup: int = 5, command: str | None = None):
        self.name = name
        self.reps = reps
        self.warmup = warmup
        self.command = command or " ".join([pathlib.Path(sys.executable).name] + sys.argv)
        self.rows: list[Row] = []
        self.machine_before = machine()

    def compare(self, op: str, config: dict, qkv_fn: Callable[[], object], peer_fn: Callable[[], object], *,
                peer: str, threads: int, flops: float | None = None, bytes_moved: float | None = None,
                extra: dict | None = None) -> Row:
        set_threads(threads)
        inner = max(calibrate_inner(qkv_fn), calibrate_inner(peer_fn))
        t_qkv, t_peer = time_alternating([qkv_fn, peer_fn], self.reps, self.warmup, inner)
        mq, mp = statistics.median(t_qkv), statistics.median(t_peer)
        row = Row(op=op, config=config, threads=threads, peer=peer, qkv_s=mq, peer_s=mp, ratio=mp / mq,
                  qkv_iqr_s=_iqr(t_qkv), peer_iqr_s=_iqr(t_peer), reps=self.reps, inner=inner,
                  gflops=flops / mq / 1e9 if flops else None,
                  gbps=bytes_moved / mq / 1e9 if bytes_moved else None, extra=extra or {})
        self.rows.append(row)
        print(f"{op:<12} {json.dumps(config):<36} t={threads} qkv {mq * 1e6:9.1f} us  {peer} {mp * 1e6:9.1f} us"
              f"  ratio {row.ratio:5.2f}", flush=True)
        return row

    def to_json(self) -> dict:
        return {
            "benchmark": self.name,
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "command": self.command,
            "machine": self.machine_before,
            "loadavg_1m_after": machine()["loadavg_1m"],
            "versions": versions(),
            "method": {"reps": self.reps, "warmup": self.warmup, "statistic": "median",
                       "order": "alternating, order swapped every round", "ratio": "peer_s / qkv_s"},
            "results": [asdict(r) for r in self.rows],
        }

    def to_markdown(self) -> str:
        m = self.machine_before
        v = versions()
        lines = [
            f"# {self.name}: qkv vs peer, side by side",
            "",
            f"`{self.command}` on {m['cpu']} ({m['cores']} cores; {', '.join(m['isa']) or 'no AVX'}); "
            f"qkv {v['qkv']}, torch {v['torch']}, numpy {v['numpy']}. "
            f"Median of {self.reps} alternating repetitions after {self.warmup} warm-up rounds; "
            "ratio = peer time / qkv time (> 1: qkv is faster). "
            f"1-minute load average {m['loadavg_1m']} before, {machine()['loadavg_1m']} after "
            f"(on {m['cores']} cores, a load near the core count makes multi-threaded times unreliable).",
            "",
            "| op | config | threads | qkv (us) | peer | peer (us) | ratio | qkv GB/s |",
            "|---|---|---:|---:|---|---:|---:|---:|",
        ]
        for r in self.rows:
            cfg = ", ".join(f"{k}={v}" for k, v in r.config.items())
            gbps = f"{r.gbps:.1f}" if r.gbps else ""
            lines.append(f"| {r.op} | {cfg} | {r.threads} | {r.qkv_s * 1e6:.1f} | {r.peer} | "
                         f"{r.peer_s * 1e6:.1f} | {r.ratio:.2f} | {gbps} |")
        return "\n".join(lines) + "\n"

    def write(self, prefix: str | os.PathLike) -> tuple[pathlib.Path, pathlib.Path]:
        prefix = pathlib.Path(prefix)
        prefix.parent.mkdir(parents=True, exist_ok=True)
        js, md = prefix.with_suffix(".json"), prefix.with_suffix(".md")
        js.write_text(json.dumps(self.to_json(), indent=1) + "\n")
        md.write_text(self.to_markdown())
        return js, md


# ---- benchmarks ------------------------------------------------------------------------


def bench_ops(args) -> Bench:
    """qkv's softmax / layer_norm / gelu against torch, f32, at 1 and 2 threads."""
    import torch
    import torch.nn.functional as F

    import qkv

    bench = Bench("ops", reps=args.reps, warmup=args.warmup)
    shapes = [(64, 128), (256, 1024), (4096, 1024), (32, 12, 128, 128)]
    for threads in args.threads:
        for shape in shapes:
            g = torch.Generator().manual_seed(0)
            x = torch.randn(shape, generator=g) * 3
            n = shape[-1]
            w, b = torch.randn(n, generator=g), torch.randn(n, generator=g)
            xq, wq, bq = qkv.from_numpy(x), qkv.from_numpy(w), qkv.from_numpy(b)
            nbytes = 2 * x.numel() * 4  # read once, write once
            cfg = {"shape": list(shape), "dtype": "f32"}
            cases = [
                ("softmax", lambda: qkv.softmax(xq, -1), lambda: torch.softmax(x, -1)),
                ("layer_norm", lambda: qkv.layer_norm(xq, wq, bq, 1e-5), lambda: F.layer_norm(x, (n,), w, b, 1e-5)),
                ("gelu", lambda: qkv.gelu(xq), lambda: F.gelu(x)),
                ("gelu_tanh", lambda: qkv.gelu(xq, approximate="tanh"), lambda: F.gelu(x, approximate="tanh")),
            ]
            for op, fq, ft in cases:
                if args.only and op not in args.only:
                    continue
                # The same answer first: a benchmark of a wrong result is no benchmark.
                torch.testing.assert_close(torch.from_dlpack(fq()), ft(), rtol=1e-4, atol=1e-5)
                bench.compare(op, cfg, fq, ft, peer="torch", threads=threads, bytes_moved=nbytes)
    return bench


BENCHMARKS = {"ops": bench_ops}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("benchmark", choices=sorted(BENCHMARKS))
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--reps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--only", nargs="*", help="run only these ops")
    parser.add_argument("--out", help="write PREFIX.json and PREFIX.md (default: bench/results/NAME-DATE)")
    args = parser.parse_args(argv)
    bench = BENCHMARKS[args.benchmark](args)
    out = args.out or pathlib.Path(__file__).resolve().parent / "results" / (
        f"{args.benchmark}-{datetime.date.today().isoformat()}")
    js, md = bench.write(out)
    print(f"wrote {js} and {md}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
