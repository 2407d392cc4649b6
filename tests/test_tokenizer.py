"""Saved tokenizers (``--tokenizer bpe:VOCAB`` and ``hf:PATH``) and the val split's size (``--val-bytes``):
trained on train only, recorded in meta.json, used by train and sample; bad input is one line."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from scaling.config import RunConfig
from scaling.data import EOT_TEXT, HFTokenizer, load_meta, tokenizer_of, train_bpe
from scaling.errors import DataError
from scaling.prepare import prepare
from scaling.sample import sample
from scaling.train import train
from scaling.cli import main
from test_data import documents, run_cli, tiktoken_cache, tokens  # noqa: F401  (tiktoken_cache: a fixture)

tokenizers = pytest.importorskip("tokenizers")
pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: torch on one thread

VOCAB = 320
WORDS = ("the frog sat on a log and sang to the moon while the river ran past the old mill; "
         "naïve façade, 東京, Grüße — tabs\tand\nnewlines").split(" ")


def corpus_docs(n: int = 400) -> list[str]:
    """Documents of pseudo-random words (a fixed seed); one holds a literal end-of-text string."""
    rng = np.random.default_rng(0)
    docs = [" ".join(rng.choice(WORDS, size=int(rng.integers(20, 60)))) + f" {i}." for i in range(n)]
    docs[7] = f"a document that quotes {EOT_TEXT} in its text"
    return docs


def write_jsonl(path: Path, docs: list[str]) -> Path:
    """One JSON record per document (so a document may hold any text, the separator included)."""
    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    return path


@pytest.fixture(scope="module")
def bpe_data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    root = tmp_path_factory.mktemp("bpe")
    docs = corpus_docs()
    out = prepare("text", [str(write_jsonl(root / "in.jsonl", docs))], tokenizer=f"bpe:{VOCAB}", out_dir=root / "ds",
                  val_fraction=0.2, workers=1)
    return out, docs


def test_bpe_round_trips_and_is_recorded(bpe_data: tuple[Path, list[str]]) -> None:
    out, docs = bpe_data
    meta = load_meta(out)
    saved = (out / "tokenizer.json").read_text()
    tok = tokenizer_of(meta, out)
    assert isinstance(tok, HFTokenizer)
    assert (meta["tokenizer"], meta["vocab_size"], meta["dtype"]) == (f"bpe:{VOCAB}", VOCAB, "uint16")
    assert meta["eot_token"] == tok.eot_token == json.loads(saved)["added_tokens"][0]["id"]
    assert meta["tokenizer_sha256"] == hashlib.sha256(saved.encode()).hexdigest()
    assert meta["tokenizer_file"] == "tokenizer.json" and meta["tokenizer_source"] == "train split"
    # Every document comes back exactly (UTF-8, tabs, newlines, the quoted separator), once.
    assert sorted(documents(out, "train") + documents(out, "val")) == sorted(docs)
    assert all(d.count(EOT_TEXT) == 0 or d == docs[7] for d in documents(out, "train") + documents(out, "val"))
    for split in ("train", "val"):  # bytes per token by hand: UTF-8 bytes of the documents / ids in the file
        n_bytes = sum(len(d.encode()) for d in documents(out, split))
        assert meta["text_bytes"][split] == n_bytes
        assert meta["bytes_per_token"][split] == pytest.approx(n_bytes / len(tokens(out, split)))
    assert meta["bytes_per_token"]["train"] > 1.5  # merges happened: the bytes tokenizer gives < 1


def test_bpe_is_trained_on_the_train_split_only_and_deterministically(bpe_data: tuple[Path, list[str]]) -> None:
    out, _ = bpe_data
    # The same trainer on the train split's documents alone, in file order, gives the same file.
    again = train_bpe(iter(documents(out, "train")), VOCAB, f"bpe:{VOCAB}")
    assert again.sha256 == load_meta(out)["tokenizer_sha256"]
    with_val = train_bpe(iter(documents(out, "train") + documents(out, "val")), VOCAB, f"bpe:{VOCAB}")
    assert with_val.sha256 != again.sha256  # so the check above can tell the two apart


def test_model_trains_on_bpe_tokens_and_samples_without_the_data_folder(bpe_data: tuple[Path, list[str]],
                                                                         tmp_path: Path) -> None:
    out, _ = bpe_data
    cfg = RunConfig.from_dict({
        "name": "bpe",
        "model": {"n_layer": 1, "d_model": 32, "n_head": 2, "d_ff": 64, "context": 16, "vocab_size": VOCAB},
        "data": {"path": str(out)},
        "train": {"batch_size": 8, "micro_batch_size": 8, "lr_peak": 3e-3, "warmup_steps": 1, "eval_interval": 4,
                  "eval_tokens": 256, "log_interval": 2, "checkpoint_interval": 4},
        "steps": 4,
    })
    result = train(cfg, tmp_path / "run", verbose=False)
    assert result.status == "done" and result.val_loss is not None
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["data"]["tokenizer"] == f"bpe:{VOCAB}"
    assert run["data"]["tokenizer_sha256"] == load_meta(out)["tokenizer_sha256"]
    prompt = "the frog sat"
    text = sample(tmp_path / "run", prompt, max_new_tokens=8)
    # Moving the data away does not matter: the checkpoint carries its tokenizer.
    (out / "tokenizer.json").rename(tmp_path / "moved.json")
    try:
        assert sample(tmp_path / "run", prompt, max_new_tokens=8) == text
    finally:
        (tmp_path / "moved.json").rename(out / "tokenizer.json")
    assert text.startswith(prompt) and len(text) > len(prompt)


def test_a_changed_tokenizer_file_stops_readers(bpe_data: tuple[Path, list[str]], tmp_path: Path) -> None:
    out, _ = bpe_data
    copy = tmp_path / "ds"
    copy.mkdir()
    for f in out.iterdir():
        (copy / f.name).write_bytes(f.read_bytes())
    (copy / "tokenizer.json").write_text((copy / "tokenizer.json").read_text().replace('"frog"', '"frag"') + " ")
    with pytest.raises(DataError, match="does not match the sha256"):
        tokenizer_of(load_meta(copy), copy)


def test_hf_tokenizer_json_is_copied_and_used(tmp_path: Path) -> None:
    # A tokenizer.json made by the tokenizers library itself, with Llama-2-style "</s>" as end-of-text.
    hf = tokenizers.Tokenizer(tokenizers.models.BPE())
    hf.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = tokenizers.decoders.ByteLevel()
    docs = corpus_docs(60)
    hf.train_from_iterator(["<pad> warm-up text"] + docs, trainer=tokenizers.trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<pad>", "</s>"], show_progress=False,
        initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet()))
    (tmp_path / "mine").mkdir()
    hf.save(str(tmp_path / "mine" / "tokenizer.json"))
    source = (tmp_path / "mine" / "tokenizer.json").read_bytes()
    out = prepare("text", [str(write_jsonl(tmp_path / "in.jsonl", docs))], tokenizer=f"hf:{tmp_path / 'mine'}",
                  out_dir=tmp_path / "ds", val_fraction=0.2, workers=2)
    meta = load_meta(out)
    assert (out / "tokenizer.json").read_bytes() == source
    assert meta["tokenizer_sha256"] == hashlib.sha256(source).hexdigest()
    assert meta["eot_token"] == hf.token_to_id("</s>") == 1 and meta["vocab_size"] == hf.get_vocab_size()
    first = documents(out, "train")[0]
    assert tokens(out, "train")[:len(hf.encode(first).ids) + 1].tolist() == hf.encode(first).ids + [1]
    assert sorted(documents(out, "train") + documents(out, "val")) == sorted(docs)


def test_prepare_summary_shows_bytes_per_token_beside_gpt2(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                          tiktoken_cache: Path) -> None:
    import tiktoken

    docs = corpus_docs(120)
    argv = ["prepare", "text", str(write_jsonl(tmp_path / "in.jsonl", docs)), "--tokenizer", "bpe:300",
            "--out", str(tmp_path / "ds"), "--val-fraction", "0.25", "--quiet"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    meta = load_meta(tmp_path / "ds")
    enc = tiktoken.get_encoding("gpt2")
    val = documents(tmp_path / "ds", "val")
    by_hand = sum(len(d.encode()) for d in val) / sum(len(enc.encode_ordinary(d)) + 1 for d in val)
    assert meta["bytes_per_token_gpt2"]["val"] == pytest.approx(by_hand)
    assert f"gpt2 on the same val text: {by_hand:.3f} bytes/token" in printed
    assert f"{meta['bytes_per_token']['val']:.3f} bytes/token" in printed and "bpe:300 trained on the train split" in printed


def test_val_bytes_takes_the_smallest_hashes_up_to_the_size(tmp_path: Path) -> None:
    docs = corpus_docs(200)
    src = write_jsonl(tmp_path / "in.jsonl", docs)
    out = prepare("text", [str(src)], tokenizer="bytes", out_dir=tmp_path / "ds", val_bytes=5000, workers=1)
    # By hand: sort documents by the first 8 bytes of their sha256, take them until 5000 bytes are reached.
    keyed = sorted(docs, key=lambda d: int.from_bytes(hashlib.sha256(d.encode()).digest()[:8], "big"))
    sizes = np.cumsum([len(d.encode()) for d in keyed])
    expected = keyed[:int(np.searchsorted(sizes, 5000)) + 1]
    assert sorted(documents(out, "val")) == sorted(expected)
    meta = load_meta(out)
    assert meta["text_bytes"]["val"] >= 5000 > meta["text_bytes"]["val"] - len(expected[-1].encode())
    assert meta["split"]["val_bytes"] == 5000 and meta["settings"]["val_bytes"] == 5000
    # The default (no size option) is still 1% by hash, with the same meta as before.
    default = load_meta(prepare("text", [str(src)], tokenizer="bytes", out_dir=tmp_path / "d0", workers=1))
    assert default["split"]["val_fraction"] == 0.01 and "val_bytes" not in default["settings"]


@pytest.mark.parametrize("case", ["vocab 256", "vocab text", "vocab empty", "hf missing", "hf not json",
                                  "hf no eot", "no package", "val both", "val too big"])
def test_bad_input_is_one_line_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture,
                                      monkeypatch: pytest.MonkeyPatch, case: str) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", corpus_docs(30))
    (tmp_path / "bad.json").write_text("{not json")
    noeot = tokenizers.Tokenizer(tokenizers.models.BPE())
    noeot.save(str(tmp_path / "noeot.json"))
    tok, extra, expect = {
        "vocab 256": ("bpe:256", [], "VOCAB must be an integer >= 257"),
        "vocab text": ("bpe:lots", [], "'bpe:lots': VOCAB must be an integer >= 257"),
        "vocab empty": ("bpe:", [], "VOCAB must be an integer >= 257"),
        "hf missing": (f"hf:{tmp_path / 'absent.json'}", [], "absent.json does not exist; give a local tokenizer.json"),
        "hf not json": (f"hf:{tmp_path / 'bad.json'}", [], "bad.json: not a readable tokenizer.json"),
        "hf no eot": (f"hf:{tmp_path / 'noeot.json'}", [], "has no end-of-text token"),
        "no package": ("bpe:300", [], "pip install 'scaling[bpe]'"),
        "val both": ("bytes", ["--val-fraction", "0.1", "--val-bytes", "1k"], "give one of them"),
        "val too big": ("bytes", ["--val-bytes", "1G"], "--val-bytes 1,000,000,000 leaves no text to train on"),
    }[case]
    if case == "no package":
        monkeypatch.setitem(sys.modules, "tokenizers", None)  # makes `import tokenizers` fail
    out = tmp_path / "out"
    code, err = run_cli(["prepare", "text", str(src), "--tokenizer", tok, "--out", str(out), "--quiet", *extra], capsys)
    assert code == 2 and expect in err and err.count("\n") == 1, err
    assert not out.exists()
