"""Peak extra memory of one fused attention call at L = 32768 (B = 1, H = 1, D = 64).

Each measurement runs in a fresh process: inputs are made and touched first, then
the peak resident set (ru_maxrss) is read before and after the call. Extra memory
is the growth of the peak beyond the output tensor itself (an n x n score buffer
would be 4 GiB here). Run: .venv/bin/python bench/attention_memory.py [--out PREFIX]
"""
import argparse
import json
import resource
import subprocess
import sys

CHILD = r"""
import resource, sys, torch, qkv
which, L, D, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
torch.set_num_threads(threads); qkv.set_num_threads(threads)
q, k, v = (torch.randn(1, 1, L, D) for _ in range(3))
qq, kk, vv = (qkv.from_dlpack(x) for x in (q, k, v))
out_bytes = L * D * 4
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
if which == "qkv":
    out = qkv.attention(qq, kk, vv)
elif which == "qkv-causal":
    out = qkv.attention(qq, kk, vv, causal=True)
else:
    out = torch.nn.functional.scaled_dot_product_attention(q, k, v)
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(max(0, after - before - out_bytes))
"""


def measure(which, length, dim, threads):
    r = subprocess.run([sys.executable, "-c", CHILD, which, str(length), str(dim), str(threads)],
                       capture_output=True, text=True, check=True)
    return int(r.stdout.strip())


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--length", type=int, default=32768)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--out", help="write PREFIX.json and PREFIX.md")
    args = ap.parse_args()
    rows = []
    for threads in (1, 2):
        for which in ("qkv", "qkv-causal", "torch"):
            extra = measure(which, args.length, args.dim, threads)
            rows.append({"impl": which, "threads": threads, "extra_mib": extra / 2**20})
            print(f"{which:11s} threads={threads}: extra peak RSS {extra / 2**20:7.2f} MiB", flush=True)
    limit = 64
    ok = all(r["extra_mib"] < limit for r in rows if r["impl"].startswith("qkv"))
    print(f"qkv under {limit} MiB: {ok}")
    if args.out:
        cmd = "python bench/attention_memory.py " + " ".join(sys.argv[1:])
        with open(args.out + ".json", "w") as f:
            json.dump({"command": cmd, "length": args.length, "dim": args.dim, "rows": rows}, f, indent=2)
        with open(args.out + ".md", "w") as f:
            f.write(f"# Extra memory of one attention call, B=1 H=1 L={args.length} D={args.dim}\n\n")
            f.write(f"Command: `{cmd}`\n\nGrowth of the peak RSS during the call, less the output "
                    f"({args.length * args.dim * 4 / 2**20:.0f} MiB); each row a fresh process. "
                    f"A materialised score matrix would be {args.length**2 * 4 / 2**30:.0f} GiB.\n\n")
            f.write("| impl | threads | extra MiB |\n|---|---:|---:|\n")
            for r in rows:
                f.write(f"| {r['impl']} | {r['threads']} | {r['extra_mib']:.2f} |\n")


if __name__ == "__main__":
    main()
