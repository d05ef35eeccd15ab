"""The qkv command end to end: training, resume after Ctrl-C, generation, evaluation,
attention views, benchmarks, inspection, and its errors (one line on stderr, a
non-zero exit, no partial output, no stack trace).

The binary is $QKV_CLI (scripts/test.sh sets it to build/release/qkv), else
build/release/qkv beside the sources.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
CLI = pathlib.Path(os.environ.get("QKV_CLI", ROOT / "build" / "release" / "qkv"))
if not CLI.exists():
    if "QKV_CLI" in os.environ:
        raise RuntimeError(f"QKV_CLI={CLI} does not exist")
    pytest.skip(f"the qkv command is not built ({CLI}); scripts/test.sh builds it", allow_module_level=True)

TINY = ["--layers", "1", "--heads", "2", "--d-model", "16", "--context", "16", "--batch", "4",
        "--threads", "1", "--quiet"]
CORPUS = ("First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n\n" * 40)


def qkv(*args, check=True, timeout=120):
    result = subprocess.run([str(CLI), *map(str, args)], capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"qkv {' '.join(map(str, args))} exited {result.returncode}:\n{result.stderr}")
    return result


def assert_clean_error(result, *fragments, code=None):
    """One line on stderr naming the problem, a non-zero exit, no stack trace."""
    assert result.returncode != 0, result
    if code is not None:
        assert result.returncode == code, (result.returncode, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("qkv: error: "), lines[0]
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    for bad in ("terminate called", "Traceback", "Aborted", "what():"):
        assert bad not in result.stderr


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "corpus.txt"
    path.write_text(CORPUS)
    return path


@pytest.fixture(scope="module")
def run(tmp_path_factory, corpus):
    """A tiny model trained for a few steps."""
    out = tmp_path_factory.mktemp("runs") / "tiny"
    result = qkv("train", "--data", corpus, "--out", out, "--steps", "30", "--eval-interval", "10",
                 "--sample-tokens", "20", "--sample-prompt", "First", *TINY, "--json")
    return out, json.loads(result.stdout)


def sha256(path) -> str:
    return hashlib.sha256(pathlib.Path(path).read_bytes()).hexdigest()


# ---- help and usage errors ---------------------------------------------------------

@pytest.mark.parametrize("command", ["train", "generate", "eval", "attend", "bench", "info", "demo"])
def test_help(command):
    result = qkv(command, "--help")
    assert "Usage" in result.stdout or "usage" in result.stdout.lower()
    assert "--help" in result.stdout


def test_unknown_flag(tmp_path):
    result = qkv("train", "--out", tmp_path / "r", "--no-such-flag", check=False)
    assert_clean_error(result, "--no-such-flag", code=2)
    assert not (tmp_path / "r").exists()


def test_missing_command():
    assert_clean_error(qkv(check=False), code=2)


# ---- train ---------------------------------------------------------------------------

def test_train_writes_the_run(run):
    out, result = run
    for name in ("config.json", "checkpoint.safetensors", "loss.csv", "char_tokenizer.json"):
        assert (out / name).exists(), name
    assert result["steps"] == 30 and not result["interrupted"]
    assert 0 < result["val_loss"] < 10 and result["sample"].startswith("First")
    rows = (out / "loss.csv").read_text().splitlines()
    assert rows[0].startswith("step,train_loss,val_loss")
    assert [int(r.split(",")[0]) for r in rows[1:]] == [10, 20, 30]
    assert json.loads((out / "config.json").read_text())["steps"] == 30
    assert not [p for p in out.iterdir() if ".tmp" in p.name]


def test_train_refuses_to_overwrite_a_run(run, corpus):
    out, _ = run
    before = sha256(out / "checkpoint.safetensors")
    result = qkv("train", "--data", corpus, "--out", out, "--steps", "5", *TINY, check=False)
    assert_clean_error(result, "already holds a run", "--resume", "--overwrite")
    assert sha256(out / "checkpoint.safetensors") == before


def test_train_missing_data(tmp_path):
    result = qkv("train", "--data", tmp_path / "missing.txt", "--out", tmp_path / "r", *TINY, check=False)
    assert_clean_error(result, "missing.txt", "does not exist")
    assert not (tmp_path / "r").exists()


def test_train_corpus_shorter_than_context(tmp_path):
    short = tmp_path / "short.txt"
    short.write_text("to be or not to be")
    result = qkv("train", "--data", short, "--out", tmp_path / "r", *TINY, check=False)
    assert_clean_error(result, "too short", "context of 16")
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("content, fragment", [
    ("{not json", "not valid JSON"),
    ('{"layers": 2, "no_such_setting": 1}', "unknown setting 'no_such_setting'"),
    ('{"layers": "two"}', "setting 'layers' has the wrong type"),
    ("[1, 2]", "expected a JSON object"),
])
def test_train_malformed_config(tmp_path, corpus, content, fragment):
    config = tmp_path / "config.json"
    config.write_text(content)
    result = qkv("train", "--config", config, "--data", corpus, "--out", tmp_path / "r", *TINY, check=False)
    assert_clean_error(result, fragment)
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("flags, fragment", [
    (["--heads", "3"], "heads"),
    (["--steps", "0"], "--steps"),
    (["--tokenizer", "words"], "--tokenizer"),
    (["--positions", "absolute"], "--positions"),
    (["--lr", "-1"], "--lr"),
])
def test_train_bad_settings(tmp_path, corpus, flags, fragment):
    result = qkv("train", "--data", corpus, "--out", tmp_path / "r", *TINY, *flags, check=False)
    assert_clean_error(result, fragment)
    assert not (tmp_path / "r").exists()


def test_train_config_file_and_flags(tmp_path, corpus):
    config = tmp_path / "settings.json"
    config.write_text(json.dumps({"steps": 4, "eval_interval": 2, "d_model": 24, "sample_tokens": 0}))
    out = tmp_path / "r"
    result = json.loads(qkv("train", "--config", config, "--data", corpus, "--out", out, *TINY,
                            "--json").stdout)
    # The flag (--d-model 16 in TINY) wins over the file; the file's other settings apply.
    assert result["config"]["d_model"] == 16 and result["config"]["steps"] == 4
    assert result["steps"] == 4 and "sample" not in result


def test_train_rotary_and_bpe(tmp_path, corpus):
    out = tmp_path / "r"
    result = json.loads(qkv("train", "--data", corpus, "--out", out, *TINY, "--steps", "3",
                            "--positions", "rotary", "--tokenizer", "bpe", "--bpe-vocab", "300",
                            "--sample-tokens", "5", "--json").stdout)
    assert (out / "vocab.json").exists() and (out / "merges.txt").exists()
    assert result["steps"] == 3 and result["config"]["positions"] == "rotary"


def test_ctrl_c_saves_and_resume_continues_exactly(tmp_path, corpus):
    """SIGINT mid-run saves a checkpoint and exits 130; resuming reaches the same
    parameters (bitwise-equal validation loss) as a run that never stopped."""
    common = ["--data", corpus, *TINY, "--schedule", "constant", "--eval-interval", "100000",
              "--checkpoint-interval", "100000", "--sample-tokens", "0", "--dropout", "0.1"]
    out = tmp_path / "interrupted"
    process = subprocess.Popen([str(CLI), "train", "--out", str(out), "--steps", "1000000",
                                *map(str, common)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    assert process.stdout.readline().startswith("training a")  # the loop is about to start
    time.sleep(1.0)
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    assert "interrupted at step" in stdout and "--resume" in stdout
    info = json.loads(qkv("info", out, "--json").stdout)
    stopped = info["training_state"]["step"]
    assert stopped > 0
    target = stopped + 7
    resumed = json.loads(qkv("train", "--resume", out, "--steps", target, "--json").stdout)
    assert resumed["steps"] == target
    straight = json.loads(qkv("train", "--out", tmp_path / "straight", "--steps", target, *common,
                              "--json").stdout)
    assert resumed["val_loss"] == straight["val_loss"]


def test_resume_with_another_architecture(run):
    out, _ = run
    before = sha256(out / "checkpoint.safetensors")
    result = qkv("train", "--resume", out, "--d-model", "32", "--quiet", check=False)
    assert_clean_error(result, "does not fit the model", "size mismatch", "transformer.wte.weight")
    assert sha256(out / "checkpoint.safetensors") == before


def test_resume_needs_a_run(tmp_path):
    result = qkv("train", "--resume", tmp_path, check=False)
    assert_clean_error(result, "config.json")


# ---- generate ------------------------------------------------------------------------

def test_generate(run):
    out, _ = run
    first = json.loads(qkv("generate", out, "--prompt", "First", "--max-new-tokens", "25", "--seed", "3",
                           "--json").stdout)
    again = json.loads(qkv("generate", out, "--prompt", "First", "--max-new-tokens", "25", "--seed", "3",
                           "--json").stdout)
    assert first["text"] == again["text"] and first["tokens"] == 25
    streamed = qkv("generate", out, "--prompt", "First", "--max-new-tokens", "25", "--seed", "3").stdout
    assert streamed == "First" + first["text"] + "\n"


def test_generate_greedy_cache_equals_recompute(run):
    out, _ = run
    args = ["generate", out, "--prompt", "Speak", "--max-new-tokens", "30", "--temperature", "0", "--json"]
    cached = json.loads(qkv(*args).stdout)
    recomputed = json.loads(qkv(*args, "--no-cache").stdout)
    assert cached["text"] == recomputed["text"]


def test_generate_stop_sequence(run):
    out, _ = run
    result = json.loads(qkv("generate", out, "--prompt", "All", "--max-new-tokens", "200", "--stop", "e",
                            "--seed", "1", "--json").stdout)
    if result["stopped_by"] is not None:
        assert result["text"].endswith("e") and result["text"].count("e") == 1


def test_generate_errors(run, tmp_path):
    out, _ = run
    assert_clean_error(qkv("generate", out, "--prompt", "", check=False), "prompt is empty")
    assert_clean_error(qkv("generate", out, "--prompt", "zzz~~", check=False), "~")
    assert_clean_error(qkv("generate", tmp_path / "nothing", "--prompt", "a", check=False), "does not exist")
    assert_clean_error(qkv("generate", tmp_path, "--prompt", "a", check=False), "not a training run")
    assert_clean_error(qkv("generate", out, "--prompt", "a", "--top-p", "0", check=False), "top_p")


# ---- eval, attend, bench, info -------------------------------------------------------

def test_eval(run, corpus, tmp_path):
    out, _ = run
    result = json.loads(qkv("eval", out, "--data", corpus, "--json").stdout)
    assert 0 < result["loss"] < 10 and result["perplexity"] > 1
    assert result["tokens"] == len(CORPUS) - 1
    assert_clean_error(qkv("eval", out, "--data", tmp_path / "none.txt", check=False), "does not exist")


def test_attend(run, tmp_path):
    out, _ = run
    views = tmp_path / "views"
    result = json.loads(qkv("attend", out, "--text", "Speak, speak.", "--out", views, "--json").stdout)
    assert result["layers"] == 1 and result["heads"] == 2 and len(result["tokens"]) == 13
    for name in ("grid.png", "layer0_head0.png", "layer0_head1.png", "attention.html", "attention.json"):
        assert (views / name).exists(), name
    assert (views / "grid.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    data = json.loads((views / "attention.json").read_text())
    assert len(data["attention"]) == 1 and len(data["attention"][0][0]) == 2


def test_attend_errors(run, tmp_path):
    out, _ = run
    assert_clean_error(qkv("attend", out, "--text", "e" * 17, "--out", tmp_path / "v", check=False),
                       "context is 16")
    assert not (tmp_path / "v").exists()
    assert_clean_error(qkv("attend", out, "--text", "Speak", "--out", tmp_path / "v", "--formats", "gif",
                           check=False), "gif")
    assert not (tmp_path / "v").exists()


def test_bench():
    result = json.loads(qkv("bench", "--lengths", "64,96", "--heads", "2", "--reps", "1", "--threads", "1",
                            "--quiet", "--json").stdout)
    assert [r["L"] for r in result["results"]] == [64, 96]
    assert all(r["fused_ms"] > 0 for r in result["results"])


def test_info(run, tmp_path):
    out, _ = run
    info = json.loads(qkv("info", out, "--json").stdout)
    assert info["training_state"]["step"] == 30 and info["model"]["n_layer"] == 1
    assert info["tokenizer"] == "char"
    checkpoint = json.loads(qkv("info", out / "checkpoint.safetensors", "--json").stdout)
    assert checkpoint["training_state"]["step"] == 30
    text = qkv("info", out).stdout
    assert "step 30" in text
    assert_clean_error(qkv("info", tmp_path / "nothing", check=False), "does not exist")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x05\x00\x00\x00\x00\x00\x00\x00{bad}")
    assert_clean_error(qkv("info", bad, check=False), "bad.safetensors")
