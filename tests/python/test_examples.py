"""The examples README.md quotes run: examples/train_tiny.py with a few steps."""
import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_train_tiny_py_runs_and_the_loss_decreases(tmp_path):
    weights = tmp_path / "tiny.safetensors"
    run = subprocess.run([sys.executable, str(ROOT / "examples" / "train_tiny.py"), "40",
                          str(weights)], capture_output=True, text=True, env=dict(os.environ),
                         timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "step  40" in run.stdout and weights.exists()
    first, last = (float(x) for x in run.stdout.split("loss ")[-1].split(" -> "))
    assert last < first
