"""qkv.corpus_bleu against sacreBLEU itself: the 13a tokenisation of every
Multi30k line (German and English), and corpus scores of perturbed
translations with one and two reference streams under each option. The data
set is read from data/ or ../shared/data; without it (or without sacrebleu)
the comparisons skip with the reason."""

from __future__ import annotations

import gzip
import pathlib
import random

import pytest

import qkv

sacrebleu = pytest.importorskip(
    "sacrebleu", reason="sacrebleu is not installed (pip install sacrebleu); BLEU parity is not checked")
from sacrebleu.tokenizers.tokenizer_13a import Tokenizer13a  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _multi30k(split: str, lang: str) -> list[str]:
    for base in (ROOT / "data", ROOT.parent / "shared" / "data"):
        path = base / "multi30k" / f"{split}.{lang}.gz"
        if path.exists():
            with gzip.open(path, "rt", encoding="utf-8") as f:
                return f.read().splitlines()
    pytest.skip(f"multi30k/{split}.{lang}.gz is in neither data/ nor ../shared/data")


def _perturbed(lines: list[str], seed: int) -> list[str]:
    """Translations of varying quality: words dropped, swapped, repeated or replaced."""
    rng = random.Random(seed)
    vocabulary = " ".join(lines).split()
    out = []
    for line in lines:
        words = line.split()
        for _ in range(rng.randrange(4)):
            if not words:
                break
            i = rng.randrange(len(words))
            op = rng.randrange(4)
            if op == 0:
                del words[i]
            elif op == 1:
                j = rng.randrange(len(words))
                words[i], words[j] = words[j], words[i]
            elif op == 2:
                words.insert(i, words[i])
            else:
                words[i] = rng.choice(vocabulary)
        out.append(" ".join(words))
    return out


def _assert_same(ours, theirs):
    assert ours.score == pytest.approx(theirs.score, rel=1e-12, abs=1e-12)
    assert ours.counts == [float(c) for c in theirs.counts]
    assert ours.totals == [float(t) for t in theirs.totals]
    assert ours.precisions == pytest.approx(theirs.precisions, rel=1e-12)
    assert ours.bp == pytest.approx(theirs.bp, rel=1e-15)
    assert (ours.sys_len, ours.ref_len) == (theirs.sys_len, theirs.ref_len)


@pytest.mark.parametrize("lang", ["de", "en"])
def test_13a_tokenisation_of_every_multi30k_line(lang):
    tokenizer = Tokenizer13a()
    lines = [line for split in ("train", "val", "test_2016_flickr") for line in _multi30k(split, lang)]
    odd = ["&quot;quoted&quot; &amp;amp; &lt;tag&gt;", "x<skipped>y", "a-\nb", "1-2-3 4.5,6 .7",
           "\u00a0\u2003spaces\u3000", "{[(brackets)]} ~`^_|\\", "\u00e4\u00f6\u00fc.\u00df,"]
    for line in lines + odd:
        assert qkv.tokenize_13a(line.rstrip()) == tokenizer(line.rstrip()), line


@pytest.mark.parametrize("options", [
    {}, {"lowercase": True}, {"tokenize": "none"}, {"smooth_method": "none"},
    {"smooth_method": "floor"}, {"smooth_method": "floor", "smooth_value": 0.3},
    {"smooth_method": "add-k"}, {"max_ngram_order": 2},
], ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()) or "defaults")
def test_corpus_bleu_equals_sacrebleu_on_multi30k(options):
    references = _multi30k("val", "en")
    second = _perturbed(references, seed=1)  # a second, noisier reference stream
    for seed, streams in ((2, [references]), (3, [references, second])):
        hypotheses = _perturbed(references, seed)
        _assert_same(qkv.corpus_bleu(hypotheses, streams, **options),
                     sacrebleu.metrics.BLEU(**options).corpus_score(hypotheses, streams))


def test_short_and_empty_lines():
    for hypotheses, references in [(["a b"], [["a c d e"]]), ([""], [["one two"]]),
                                   (["x y z", ""], [["x y z", ""]]), (["the the the"], [["the cat the"], ["the"]])]:
        _assert_same(qkv.corpus_bleu(hypotheses, references), sacrebleu.corpus_bleu(hypotheses, references))


def test_errors():
    with pytest.raises(qkv.QkvError, match="reference stream 0 has 1 lines; there are 2"):
        qkv.corpus_bleu(["a", "b"], [["a"]])
    with pytest.raises(qkv.QkvError, match="tokenize must be"):
        qkv.corpus_bleu(["a"], [["a"]], tokenize="intl")
    with pytest.raises(qkv.QkvError, match="smooth_method must be"):
        qkv.corpus_bleu(["a"], [["a"]], smooth_method="plus")
