#!/usr/bin/env python3
"""One AdamW step over a 10.7M-parameter f32 model: qkv before / after the
Highway optimizer kernels, and torch.optim.AdamW (foreach=False and True).

Everything runs in one process with the same thread count. "before" is an
older revision's src/train/optim.cc (plain scalar loops), compiled with
bench/optim_before.cc into a small shared library against the current
libqkv.so and driven through ctypes; "after" is the qkv Python module.
All four update the same kind of data (20 tensors, random values, random
gradients) and keep their own copies, so the steps do not interfere.

    python bench/optim.py --build build/h-optim --before-rev a404c4b^ \
        --out bench/results/optim-2026-11-22
"""

from __future__ import annotations

import argparse
import ctypes
import pathlib
import subprocess
import sys
import tempfile

import numpy as np

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
import runner  # noqa: E402

# 20 tensors, 10.7M parameters: a small transformer's worth of matrices.
SHAPES = [(1024, 1024)] * 8 + [(1024, 256)] * 8 + [(1024,)] * 2 + [(256, 416)] * 2
LR = 1e-3


def build_before(build: pathlib.Path, rev: str, workdir: pathlib.Path) -> pathlib.Path:
    """bench/optim_before.cc + `rev`'s src/train/optim.cc -> a shared library."""
    old = workdir / "optim_before_rev.cc"
    old.write_text(subprocess.check_output(["git", "-C", str(ROOT), "show", f"{rev}:src/train/optim.cc"], text=True))
    lib = workdir / "libqkv_optim_before.so"
    cmd = ["c++", "-O3", "-DNDEBUG", "-std=c++20", "-fPIC", "-fopenmp", "-shared", "-Wl,-Bsymbolic",
           f"-I{ROOT / 'include'}", f"-I{build / 'include'}", f"-I{ROOT / 'src'}",
           str(HERE / "optim_before.cc"), str(old), "-o", str(lib),
           f"-L{build}", "-lqkv", f"-Wl,-rpath,{build}"]
    subprocess.check_call(cmd)
    return lib


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--build", default="build/h-optim", help="build directory with libqkv.so")
    ap.add_argument("--before-rev", default=None, help="git revision of the 'before' optim.cc (omit: no before)")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--out", default=None, help="prefix for .json / .md")
    args = ap.parse_args(argv)

    import torch

    import qkv

    build = pathlib.Path(args.build).resolve()
    numel = sum(int(np.prod(s)) for s in SHAPES)
    # Adam reads p, g, exp_avg, exp_avg_sq and writes p, exp_avg, exp_avg_sq.
    nbytes = 7 * 4 * numel
    config = {"tensors": len(SHAPES), "params": numel, "dtype": "f32", "lr": LR, "weight_decay": 0.01}
    print(f"{len(SHAPES)} tensors, {numel / 1e6:.2f}M parameters", flush=True)

    rng = np.random.default_rng(0)

    def arrays():
        return [rng.standard_normal(s, dtype=np.float32) for s in SHAPES]

    # qkv after: the Python module (parameters are the NumPy arrays, updated in place).
    q_params, q_grads = arrays(), arrays()
    q_opt = qkv.AdamW({f"p{k}": p for k, p in enumerate(q_params)}, lr=LR)
    q_grad_dict = {f"p{k}": qkv.from_numpy(g) for k, g in enumerate(q_grads)}

    def qkv_after():
        q_opt.step(q_grad_dict)

    # torch, both implementations, with its own copies.
    def torch_opt(foreach):
        params = [torch.from_numpy(a).requires_grad_() for a in arrays()]
        for p, g in zip(params, arrays()):
            p.grad = torch.from_numpy(g)
        return torch.optim.AdamW(params, lr=LR, weight_decay=0.01, foreach=foreach)

    t_single, t_foreach = torch_opt(False), torch_opt(True)

    peers = [("torch foreach=False", t_single.step), ("torch foreach=True", t_foreach.step)]

    keep = []
    if args.before_rev:
        with tempfile.TemporaryDirectory() as tmp:
            lib = ctypes.CDLL(str(build_before(build, args.before_rev, pathlib.Path(tmp))))
        lib.qkv_bench_adamw_new.restype = ctypes.c_void_p
        lib.qkv_bench_adamw_new.argtypes = [ctypes.c_int, ctypes.POINTER(ctypes.c_int64),
                                            ctypes.POINTER(ctypes.POINTER(ctypes.c_float)),
                                            ctypes.POINTER(ctypes.POINTER(ctypes.c_float)), ctypes.c_double]
        lib.qkv_bench_step.argtypes = [ctypes.c_void_p]
        b_params, b_grads = [a.ravel() for a in arrays()], [a.ravel() for a in arrays()]
        keep += [b_params, b_grads]
        fp = ctypes.POINTER(ctypes.c_float)
        sizes = (ctypes.c_int64 * len(SHAPES))(*[a.size for a in b_params])
        pp = (fp * len(SHAPES))(*[a.ctypes.data_as(fp) for a in b_params])
        gp = (fp * len(SHAPES))(*[a.ctypes.data_as(fp) for a in b_grads])
        handle = lib.qkv_bench_adamw_new(len(SHAPES), sizes, pp, gp, LR)

        def qkv_before():
            lib.qkv_bench_step(handle)

        peers.insert(0, (f"qkv before ({args.before_rev})", qkv_before))

    bench = runner.Bench("optim", reps=args.reps, warmup=args.warmup)
    for threads in args.threads:
        for peer, fn in peers:
            bench.compare("adamw_step", config, qkv_after, fn, peer=peer, threads=threads, bytes_moved=nbytes)
    if args.out:
        for path in bench.write(args.out):
            print("wrote", path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
