#!/usr/bin/env python3
"""The loss curve of a `qkv train` run as a PNG: training and validation loss
against step, from the run's loss.csv (needs matplotlib).

    .venv/bin/python bench/plot_loss.py runs/long/loss.csv bench/results/shakespeare-30min.png \
        --target 1.70 --title "Tiny Shakespeare, characters"
"""

from __future__ import annotations

import argparse
import csv
import pathlib


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("loss_csv", type=pathlib.Path)
    ap.add_argument("png", type=pathlib.Path)
    ap.add_argument("--target", type=float, help="draw a horizontal line at this loss")
    ap.add_argument("--title", default="qkv train")
    args = ap.parse_args(argv)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with args.loss_csv.open() as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise SystemExit(f"{args.loss_csv}: no rows")
    steps = [int(r["step"]) for r in rows]
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    ax.plot(steps, [float(r["train_loss"]) for r in rows], label="train (mean since the last point)")
    ax.plot(steps, [float(r["val_loss"]) for r in rows], label="validation (whole split)")
    if args.target is not None:
        ax.axhline(args.target, color="gray", linestyle="--", linewidth=1, label=f"target {args.target}")
    minutes = float(rows[-1]["elapsed_s"]) / 60
    ax.set_xlabel(f"step (last point at {minutes:.1f} min)")
    ax.set_ylabel("cross-entropy (nats / token)")
    ax.set_title(args.title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    args.png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.png)
    print(f"wrote {args.png}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
