#!/usr/bin/env python3
"""Writes cased_vocab.txt: a cased BERT vocabulary (4000 tokens) that the
`tokenizers` package's WordPiece trainer (BertWordPieceTokenizer with
lowercase=False, strip_accents=False) learns from Multi30k's German and English
training captions and edge_cases.txt, so that capitals, umlauts, ß, Greek,
Cyrillic and CJK characters have tokens of their own.

Run: .venv/bin/python tests/data/wordpiece/make_cased_vocab.py [path/to/multi30k]
"""
import gzip
import pathlib
import re
import sys
import tempfile

from tokenizers.implementations import BertWordPieceTokenizer

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parents[2]


def main():
    multi30k = pathlib.Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT.parent / "shared" / "data" / "multi30k"
    lines = []
    for name in ("train.de.gz", "train.en.gz"):
        with gzip.open(multi30k / name, "rt", encoding="utf-8") as f:
            lines += f.read().splitlines()
    edge = (HERE / "edge_cases.txt").read_text(encoding="utf-8").splitlines()
    lines += [re.sub(r"\\u\{([0-9A-Fa-f]+)\}", lambda m: chr(int(m.group(1), 16)), l)
              for l in edge if not l.startswith("# ")]
    tok = BertWordPieceTokenizer(lowercase=False, strip_accents=False)
    tok.train_from_iterator(lines, vocab_size=4000, show_progress=False)
    with tempfile.TemporaryDirectory() as tmp:
        (path,) = tok.save_model(tmp)
        (HERE / "cased_vocab.txt").write_bytes(pathlib.Path(path).read_bytes())
    print(f"wrote {HERE / 'cased_vocab.txt'} ({tok.get_vocab_size()} tokens)")


if __name__ == "__main__":
    main()
