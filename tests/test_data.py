"""The data stage: tokenizers, prepare (text, pysrc, tinystories download), token files, loader."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import lzma
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from scaling import data, sources
from scaling import prepare as prep  # the module; `prepare` is its function
from scaling.cli import main
from scaling.data import TokenLoader, get_tokenizer, load_meta, token_dtype, tokenizer_of
from scaling.download import download
from scaling.errors import ConfigError, DataError
from scaling.prepare import prepare

TIKTOKEN_CACHE = Path(__file__).resolve().parents[2] / "shared" / "tiktoken_cache"
SEP = "\n<|endoftext|>\n"
SAMPLES = [
    "Hello world",
    "Once upon a time, a café served ☕ to 日本 friends. 🙂\n\nThe end.",
    "def f(x):\n    return x  # four spaces\n\t\ttabs\r\nCRLF",
    "a literal <|endoftext|> inside a document is ordinary text",
    "",
]


@pytest.fixture
def tiktoken_cache(monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point tiktoken at ../shared/tiktoken_cache (skip when this checkout has none beside it)."""
    if not TIKTOKEN_CACHE.is_dir():
        pytest.skip(f"no offline tiktoken cache at {TIKTOKEN_CACHE} (see ../shared/README.md)")
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(TIKTOKEN_CACHE))
    return TIKTOKEN_CACHE


def tokens(folder: Path, split: str) -> np.ndarray:
    meta = load_meta(folder)
    return np.fromfile(folder / f"{split}.bin", dtype=meta["dtype"])


def documents(folder: Path, split: str) -> list[str]:
    """The texts of the documents in a prepared split (split at end-of-text, decoded)."""
    meta = load_meta(folder)
    tok = tokenizer_of(meta, folder)
    ids = tokens(folder, split).tolist()
    assert ids and ids[-1] == meta["eot_token"], "every document must end with end-of-text"
    out, start = [], 0
    for i, t in enumerate(ids):
        if t == meta["eot_token"]:
            out.append(tok.decode(ids[start:i]))
            start = i + 1
    return out


def write_dataset(folder: Path, train: np.ndarray, val: np.ndarray, vocab_size: int = 257) -> Path:
    """A prepared folder written by hand, to test the loader on exact token values."""
    folder.mkdir(parents=True, exist_ok=True)
    dtype = token_dtype(vocab_size)
    train.astype(dtype).tofile(folder / "train.bin")
    val.astype(dtype).tofile(folder / "val.bin")
    meta = {"name": "hand", "tokenizer": "bytes", "vocab_size": vocab_size, "eot_token": vocab_size - 1,
            "dtype": dtype.name, "tokens": {"train": len(train), "val": len(val)},
            "documents": {"train": 1, "val": 1}, "split": {"rule": "hand"}, "sources": [], "skipped": {},
            "created": "2026-01-01T00:00:00+00:00", "version": 1}
    (folder / "meta.json").write_text(json.dumps(meta))
    return folder


# ----------------------------------------------------------------------------- tokenizers


def test_bytes_tokenizer_round_trips_and_keeps_eot_apart() -> None:
    tok = get_tokenizer("bytes")
    assert (tok.vocab_size, tok.eot_token) == (257, 256)
    for text in SAMPLES:
        ids = tok.encode(text)
        assert tok.decode(ids) == text
        assert max(ids, default=0) < 256  # text never produces the end-of-text id
        assert tok.encode_array(text).tolist() == ids
    assert tok.decode(tok.encode("a") + [256] + tok.encode("b")) == "a<|endoftext|>b"


@given(st.text())
def test_bytes_round_trip_holds_for_any_text(text: str) -> None:
    tok = get_tokenizer("bytes")
    assert tok.decode(tok.encode(text)) == text


@given(st.lists(st.binary(max_size=30).map(lambda b: b.replace(b"<|", b"")), max_size=20),
       st.integers(1, 40), st.sampled_from([b"<|endoftext|>", b"\n\n", b"|"]))
def test_split_stream_finds_separators_across_block_edges(docs: list[bytes], block_size: int, sep: bytes) -> None:
    docs = [d.replace(sep, b"") for d in docs]  # a separator inside a document would split it
    if sep == b"\n\n":  # no document may end or start with the newline that would form one
        docs = [d.strip(b"\n") for d in docs]
    stream = io.BytesIO(sep.join(docs))
    assert list(sources._split_stream(stream, sep, None, block_size)) == (docs or [b""])


def test_gpt2_matches_tiktoken_and_round_trips(tiktoken_cache: Path) -> None:
    import tiktoken

    tok = get_tokenizer("gpt2")
    enc = tiktoken.get_encoding("gpt2")
    assert tok.encode("Hello world") == [15496, 995]
    assert (tok.vocab_size, tok.eot_token) == (50257, 50256)
    for text in SAMPLES:
        assert tok.encode(text) == enc.encode_ordinary(text)
        assert tok.encode_array(text).tolist() == enc.encode_ordinary(text)  # the fast path prepare uses
        assert tok.decode(tok.encode(text)) == text
    assert 50256 not in tok.encode("<|endoftext|>")  # text cannot forge the separator


def test_unknown_tokenizer_names_the_choices() -> None:
    with pytest.raises(DataError, match=r"--tokenizer 'gpt5' is unknown: use 'bytes', bpe:VOCAB, hf:PATH or a tiktoken encoding \(.*gpt2"):
        get_tokenizer("gpt5")


def test_offline_tokenizer_error_says_how_to_fix(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import tiktoken.load
    import tiktoken.registry

    def offline(url: str) -> bytes:
        raise ConnectionError(f"no network for {url}")

    monkeypatch.setattr(tiktoken.load, "read_file", offline)
    monkeypatch.setattr(tiktoken.registry, "ENCODINGS", {})
    monkeypatch.setattr(data, "_TOKENIZERS", {})
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))
    with pytest.raises(DataError) as err:
        get_tokenizer("r50k_base")
    msg = str(err.value)
    assert "'r50k_base' could not be loaded" in msg and f"TIKTOKEN_CACHE_DIR={tmp_path}" in msg
    assert "--tokenizer bytes" in msg and "\n" not in msg


def test_dtype_is_uint16_up_to_65535_ids_else_uint32() -> None:
    assert token_dtype(257) == np.uint16
    assert token_dtype(50257) == np.uint16
    assert token_dtype(65535) == np.uint16
    assert token_dtype(65536) == np.uint32
    assert token_dtype(100277) == np.uint32


# ----------------------------------------------------------------------------- loader


def test_random_batches_are_windows_shifted_by_one_and_reproducible(tmp_path: Path) -> None:
    folder = write_dataset(tmp_path / "d", np.arange(5000) % 251, np.arange(300) % 251)
    loader = TokenLoader(folder, "train", context=16, batch_size=8, seed=3)
    x, y = loader.next_batch()
    assert x.shape == y.shape == (8, 16) and x.dtype == y.dtype == np.int64
    assert (x[:, 1:] == y[:, :-1]).all()
    train = tokens(folder, "train")
    for row_x, row_y in zip(x, y):  # each row is a real window of the file
        starts = [i for i in range(len(train) - 16) if (train[i:i + 16] == row_x).all()]
        assert any((train[i + 1:i + 17] == row_y).all() for i in starts)
    assert loader.tokens_consumed == 8 * 16 and loader.epochs == pytest.approx(128 / 5000)
    again = TokenLoader(folder, "train", context=16, batch_size=8, seed=3)
    assert (again.next_batch()[0] == x).all()
    assert not (TokenLoader(folder, "train", 16, 8, seed=4).next_batch()[0] == x).all()


def test_ddp_ranks_draw_different_random_windows(tmp_path: Path) -> None:
    folder = write_dataset(tmp_path / "d", np.arange(60000) % 256, np.arange(300) % 256)
    xs = [TokenLoader(folder, "train", 8, 4, seed=0, rank=r, world_size=2).next_batch()[0] for r in (0, 1)]
    assert not (xs[0] == xs[1]).all()


def test_sequential_mode_walks_the_split_and_counts_epochs(tmp_path: Path) -> None:
    folder = write_dataset(tmp_path / "d", np.arange(100), np.arange(101))  # ids 0..100 < 257
    loader = TokenLoader(folder, "val", context=10, batch_size=4, mode="sequential")
    starts = []
    for _ in range(3):
        x, y = loader.next_batch()
        starts += x[:, 0].tolist()
        assert (y[:, -1] == x[:, -1] + 1).all()
    # 101 tokens hold 10 windows of 10 targets; the 11th row wraps to the start.
    assert starts == [0, 10, 20, 30, 40, 50, 60, 70, 80, 90, 0, 10]
    assert loader.tokens_consumed == 120 and loader.epochs == pytest.approx(120 / 101)


def test_sequential_ranks_interleave_without_overlap(tmp_path: Path) -> None:
    folder = write_dataset(tmp_path / "d", np.arange(200) % 256, np.arange(200) % 256)
    loaders = [TokenLoader(folder, "val", 10, 2, mode="sequential", rank=r, world_size=2) for r in (0, 1)]
    starts = sorted(s for ld in loaders for _ in range(4) for s in ld.next_batch()[0][:, 0].tolist())
    assert starts == list(range(0, 160, 10))
    assert loaders[0].tokens_consumed == 80 and loaders[0].epochs == pytest.approx(80 / 200)


@pytest.mark.parametrize("mode", ["random", "sequential"])
def test_state_dict_resumes_the_same_batch_sequence(tmp_path: Path, mode: str) -> None:
    folder = write_dataset(tmp_path / "d", np.arange(3000) % 256, np.arange(300) % 256)
    first = TokenLoader(folder, "train", 12, 3, seed=7, mode=mode)
    for _ in range(5):
        first.next_batch()
    state = json.loads(json.dumps(first.state_dict()))
    expected = [first.next_batch()[0] for _ in range(3)]
    resumed = TokenLoader(folder, "train", 12, 3, seed=7, mode=mode)
    resumed.load_state_dict(state)
    assert resumed.tokens_consumed == 5 * 3 * 12
    assert all((resumed.next_batch()[0] == e).all() for e in expected)
    with pytest.raises(DataError, match="seed 7 != 8"):
        TokenLoader(folder, "train", 12, 3, seed=8, mode=mode).load_state_dict(state)


def test_loader_reads_uint32_ids_above_65535(tmp_path: Path) -> None:
    ids = np.array([0, 65535, 65536, 100000, 100276] * 10)
    folder = write_dataset(tmp_path / "d", ids, ids, vocab_size=100277)
    assert load_meta(folder)["dtype"] == "uint32"
    x, y = TokenLoader(folder, "val", 49, 1, mode="sequential").next_batch()
    assert x[0].tolist() == ids[:49].tolist() and y[0].tolist() == ids[1:50].tolist()


def test_loader_errors_name_the_path_and_the_fix(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"data folder .*nowhere: folder does not exist; prepare it with"):
        TokenLoader(tmp_path / "nowhere", "train", 8, 1)
    folder = write_dataset(tmp_path / "d", np.arange(100), np.arange(20))
    with pytest.raises(DataError, match=r"val.bin has 20 tokens, fewer than context\+1 = 33"):
        TokenLoader(folder, "val", 32, 1)
    np.arange(50, dtype=np.uint16).tofile(folder / "train.bin")
    with pytest.raises(DataError, match="train.bin holds 50 tokens but meta.json says 100; re-run scaling prepare"):
        TokenLoader(folder, "train", 8, 1)


# ----------------------------------------------------------------------------- prepare text


def write_corpus(root: Path) -> set[str]:
    """Every supported format, plus junk to skip; returns the documents prepare must keep."""
    stories = [f"Story {i}: Tom saw a {['cat', 'dog', 'café ☕', '日本の猫'][i % 4]} and smiled." for i in range(8)]
    root.mkdir()
    (root / "a.txt").write_text(SEP.join(stories[:4]) + "\n")
    (root / "b.md").write_text("# Notes\n\nMarkdown is one document.\n")
    (root / "c.jsonl").write_text("\n".join([json.dumps({"text": stories[4], "id": 1}),
                                             json.dumps({"text": stories[0]}),  # duplicate of a.txt's first
                                             "{not json",
                                             json.dumps({"title": "no text field"}), ""]))
    with gzip.open(root / "d.jsonl.gz", "wt") as f:
        f.write(json.dumps({"text": stories[5]}) + "\n")
    with lzma.open(root / "e.txt.xz", "wt") as f:
        f.write(stories[6] + SEP + "xz second")
    import zstandard

    (root / "f.txt.zst").write_bytes(zstandard.ZstdCompressor().compress((stories[7] + SEP + "zst second").encode()))
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": ["parquet row", None], "n": [1, 2]}), root / "g.parquet")
    (root / "sub").mkdir()
    (root / "sub" / "binary.txt").write_bytes(b"\x00\x01\x02ELF")
    (root / "sub" / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    (root / "sub" / "empty.txt").write_text("  \n")
    (root / "sub" / "picture.png").write_bytes(b"\x89PNG not read")
    return set(stories) | {"# Notes\n\nMarkdown is one document.", "xz second", "zst second", "parquet row"}


def test_prepare_text_reads_every_format_and_skips_junk(tmp_path: Path) -> None:
    expected = write_corpus(tmp_path / "corpus")
    out = prepare("text", [str(tmp_path / "corpus")], tokenizer="bytes", out_dir=tmp_path / "ds", val_fraction=0.2)
    meta = load_meta(out)
    kept = documents(out, "train") + documents(out, "val")
    assert sorted(kept) == sorted(expected)  # decode(encode(doc)) == doc for every document
    assert meta["documents"] == {"train": len(documents(out, "train")), "val": len(documents(out, "val"))}
    assert meta["documents"]["val"] >= 1
    assert meta["skipped"] == {"bad_records": 3, "binary_documents": 1, "duplicate_documents": 1,
                               "empty_documents": 1, "non_utf8_documents": 1}
    assert meta["tokens"]["train"] * 2 == (out / "train.bin").stat().st_size  # uint16 for vocab 257
    assert meta["text_bytes"]["train"] + meta["text_bytes"]["val"] == sum(len(d.encode()) for d in expected)
    manifest = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert len(manifest) == 10 and not any(m["path"].endswith(".png") for m in manifest)
    latin1 = next(m for m in manifest if m["path"].endswith("latin1.txt"))
    assert latin1["non_utf8_documents"] == 1 and "documents" not in latin1
    assert latin1["sha256"] == hashlib.sha256("caf\xe9".encode("latin-1")).hexdigest()
    assert meta["sources"][0]["files"] == 10
    assert not list(out.glob(".*.tmp"))


def test_split_is_by_document_hash_and_worker_count_does_not_change_the_output(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(prep, "_CHUNK_BYTES", 200)  # many small tasks, so ordering is exercised
    docs = [f"document number {i} " * (1 + i % 7) for i in range(300)]
    (tmp_path / "in.txt").write_text(SEP.join(docs))
    one, two = (prepare("text", [str(tmp_path / "in.txt")], tokenizer="bytes", out_dir=tmp_path / f"w{n}", workers=n,
                        val_fraction=0.1) for n in (1, 2))
    for split in ("train", "val"):
        assert (one / f"{split}.bin").read_bytes() == (two / f"{split}.bin").read_bytes()
    val = documents(one, "val")
    rule = [d for d in docs if int.from_bytes(hashlib.sha256(d.strip().encode()).digest()[:8], "big") < 0.1 * 2**64]
    assert val == [d.strip() for d in rule] and 10 < len(val) < 50


def test_a_small_corpus_still_gets_one_val_document(tmp_path: Path) -> None:
    (tmp_path / "in.txt").write_text(SEP.join(["first", "second", "third"]))
    out = prepare("text", [str(tmp_path / "in.txt")], tokenizer="bytes", out_dir=tmp_path / "ds", val_fraction=1e-9)
    meta = load_meta(out)
    assert meta["documents"] == {"train": 2, "val": 1} and meta["split"]["forced_val_documents"] == 1
    smallest = min(["first", "second", "third"], key=lambda d: hashlib.sha256(d.encode()).digest())
    assert documents(out, "val") == [smallest]


def test_doc_sep_blank_line_and_none(tmp_path: Path) -> None:
    (tmp_path / "prose.txt").write_text("para one\nline two\n\n\npara two\n\npara three\n")
    blank = prepare("text", [str(tmp_path / "prose.txt")], tokenizer="bytes", out_dir=tmp_path / "b",
                    doc_sep="blank-line", val_fraction=0.3)
    kept = sorted(documents(blank, "train") + documents(blank, "val"))
    assert kept == ["para one\nline two", "para three", "para two"]
    (tmp_path / "two.txt").write_text("x\n")
    whole = prepare("text", [str(tmp_path / "prose.txt"), str(tmp_path / "two.txt")], tokenizer="bytes",
                    out_dir=tmp_path / "n", doc_sep="none")
    kept = sorted(documents(whole, "train") + documents(whole, "val"))
    assert kept == ["para one\nline two\n\n\npara two\n\npara three\n", "x\n"]


def test_rerun_is_a_no_op_and_a_changed_input_rebuilds(tmp_path: Path) -> None:
    (tmp_path / "in.txt").write_text(SEP.join(f"doc {i}" for i in range(50)))
    args = dict(tokenizer="bytes", out_dir=tmp_path / "ds", val_fraction=0.2)
    out = prepare("text", [str(tmp_path / "in.txt")], **args)
    stamps = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    prepare("text", [str(tmp_path / "in.txt")], **args)
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == stamps
    (tmp_path / "in.txt").write_text(SEP.join(f"doc {i}" for i in range(60)))
    prepare("text", [str(tmp_path / "in.txt")], **args)
    assert sum(load_meta(out)["documents"].values()) == 60


def test_an_interrupted_run_leaves_nothing_that_looks_complete(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(prep, "_CHUNK_BYTES", 100)
    (tmp_path / "in.txt").write_text(SEP.join(f"document {i} " * 5 for i in range(100)))
    real, calls = prep._encode_chunk, []

    def interrupted(task):
        calls.append(1)
        if len(calls) == 5:
            raise KeyboardInterrupt
        return real(task)

    monkeypatch.setattr(prep, "_encode_chunk", interrupted)
    with pytest.raises(KeyboardInterrupt):
        prepare("text", [str(tmp_path / "in.txt")], tokenizer="bytes", out_dir=tmp_path / "new", workers=1)
    assert not (tmp_path / "new").exists()
    # Over an existing dataset, a failed rebuild leaves the old one whole and loadable.
    monkeypatch.setattr(prep, "_encode_chunk", real)
    old = prepare("text", [str(tmp_path / "in.txt")], tokenizer="bytes", out_dir=tmp_path / "old", workers=1)
    before = {p.name: p.read_bytes() for p in old.iterdir()}
    calls.clear()
    monkeypatch.setattr(prep, "_encode_chunk", interrupted)
    with pytest.raises(KeyboardInterrupt):
        prepare("text", [str(tmp_path / "in.txt")], tokenizer="bytes", out_dir=old, workers=1, force=True)
    assert {p.name: p.read_bytes() for p in old.iterdir()} == before
    TokenLoader(old, "train", 8, 2).next_batch()


@pytest.mark.parametrize("case", ["missing path", "empty corpus", "unknown tokenizer", "corrupt gz", "jsonl field",
                                  "bad val fraction"])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                         case: str) -> None:
    inputs = tmp_path / "in"
    inputs.mkdir()
    (inputs / "ok.txt").write_text("fine text")
    extra: list[str] = []
    if case == "missing path":
        paths, expect = [str(tmp_path / "absent.txt")], "absent.txt' does not exist"
    elif case == "empty corpus":
        (inputs / "ok.txt").write_bytes(b"\x00binary")
        (inputs / "blank.md").write_text("\n")
        paths, expect = [str(inputs)], "0 usable document(s) (1 binary_documents, 1 empty_documents)"
    elif case == "unknown tokenizer":
        paths, expect, extra = [str(inputs)], "--tokenizer 'nope' is unknown", ["--tokenizer", "nope"]
    elif case == "corrupt gz":
        (inputs / "bad.txt.gz").write_bytes(b"\x1f\x8b\x08 this is not gzip")
        paths, expect = [str(inputs)], "bad.txt.gz: cannot be read as text (gz)"
    elif case == "jsonl field":
        (inputs / "r.jsonl").write_text(json.dumps({"body": "x"}) + "\n")
        paths, expect = [str(inputs)], "r.jsonl: no record has a string field 'text' (keys: body); pass --field"
    else:
        paths, expect, extra = [str(inputs)], "--val-fraction must be > 0", ["--val-fraction", "0"]
    out = tmp_path / "out"
    argv = ["prepare", "text", *paths, "--out", str(out), "--quiet", *(extra or ["--tokenizer", "bytes"])]
    code, err = run_cli(argv, capsys)
    assert code == 2 and expect in err and err.count("\n") == 1, err
    assert not out.exists()


def run_cli(argv: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str]:
    """Exit code and stderr of ``scaling ARGV`` (argparse errors exit through SystemExit)."""
    try:
        code = main(argv)
    except SystemExit as e:
        code = int(e.code or 0)
    return code, capsys.readouterr().err


def test_option_errors_name_the_flag() -> None:
    with pytest.raises(ConfigError, match="PATH arguments are only read by 'scaling prepare text'"):
        prepare("pysrc", ["x"])
    with pytest.raises(ConfigError, match="--workers must be >= 1"):
        prepare("pysrc", workers=0)


# ----------------------------------------------------------------------------- pysrc, gpt2, uint32


def test_pysrc_prepares_a_capped_slice_of_the_stdlib(tmp_path: Path) -> None:
    out = prepare("pysrc", tokenizer="bytes", out_dir=tmp_path / "py", max_bytes=400_000, val_fraction=0.05)
    meta = load_meta(out)
    manifest = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert all(m["path"].startswith("stdlib/") and m["path"].endswith(".py") for m in manifest)
    assert sum(m["bytes"] for m in manifest) <= 400_000 and meta["sources"][0]["files"] == len(manifest)
    assert meta["documents"]["train"] >= 5 and meta["documents"]["val"] >= 1
    assert meta["tokens"]["train"] == meta["text_bytes"]["train"] + meta["documents"]["train"]  # bytes + one eot each
    root = Path(meta["sources"][0]["source"].split(":", 1)[1])  # "stdlib:/path/to/lib/python3.X"
    kept = set(documents(out, "train") + documents(out, "val"))
    assert all((root / m["path"][len("stdlib/"):]).read_text() in kept for m in manifest if m.get("documents"))


def test_gpt2_token_files_hold_tiktoken_ids(tmp_path: Path, tiktoken_cache: Path) -> None:
    import tiktoken

    enc = tiktoken.get_encoding("gpt2")
    (tmp_path / "in.txt").write_text(SEP.join(SAMPLES[:3] + [f"story {i} about a frog" for i in range(20)]))
    out = prepare("text", [str(tmp_path / "in.txt")], out_dir=tmp_path / "ds", workers=2, val_fraction=0.2)
    meta = load_meta(out)
    assert (meta["tokenizer"], meta["vocab_size"], meta["eot_token"], meta["dtype"]) == ("gpt2", 50257, 50256, "uint16")
    ids = tokens(out, "train").tolist()
    first = documents(out, "train")[0]
    assert ids[:len(enc.encode_ordinary(first)) + 1] == enc.encode_ordinary(first) + [50256]
    assert sorted(documents(out, "train") + documents(out, "val")) == sorted(s.strip() for s in SAMPLES[:3] + [
        f"story {i} about a frog" for i in range(20)])


def test_cl100k_is_written_as_uint32_and_loads(tmp_path: Path, tiktoken_cache: Path) -> None:
    (tmp_path / "in.txt").write_text(SEP.join(f"Grüße {i}: naïve façade, 東京 and ∑ symbols" for i in range(40)))
    out = prepare("text", [str(tmp_path / "in.txt")], tokenizer="cl100k_base", out_dir=tmp_path / "ds",
                  val_fraction=0.3)
    meta = load_meta(out)
    assert meta["dtype"] == "uint32" and meta["vocab_size"] > 65535
    assert (out / "train.bin").stat().st_size == 4 * meta["tokens"]["train"]
    assert all(d.startswith("Grüße") for d in documents(out, "train"))
    x, _ = TokenLoader(out, "train", 16, 2).next_batch()
    assert x.max() < meta["vocab_size"]


# ----------------------------------------------------------------------------- tinystories download


class _Server(ThreadingHTTPServer):
    files: dict[str, bytes]
    drop_after: dict[str, int]  # name -> bytes sent before the connection is cut (once)
    requests: list[tuple[str, str | None]]


class _Handler(BaseHTTPRequestHandler):
    """Serves ``server.files`` with Range support; can cut a transfer short once."""

    server: _Server

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        name = self.path.lstrip("/")
        self.server.requests.append((name, self.headers.get("Range")))
        body = self.server.files.get(name)
        if body is None:
            self.send_error(404)
            return
        start = int(self.headers["Range"].split("=")[1].split("-")[0]) if self.headers.get("Range") else 0
        self.send_response(206 if start else 200)
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        self.send_header("Content-Length", str(len(body) - start))
        self.end_headers()
        cut = self.server.drop_after.pop(name, None)
        self.wfile.write(body[start:] if cut is None else body[start:start + cut])
        self.close_connection = cut is not None

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server() -> _Server:
    srv = _Server(("127.0.0.1", 0), _Handler)
    srv.files, srv.drop_after, srv.requests = {}, {}, []
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def url(srv: _Server, name: str = "") -> str:
    return f"http://127.0.0.1:{srv.server_address[1]}/{name}"


def test_download_resumes_an_interrupted_transfer(server: _Server, tmp_path: Path) -> None:
    body = bytes(range(256)) * 4000  # ~1 MB
    server.files["big.bin"] = body
    server.drop_after["big.bin"] = 300_000
    digest = download(url(server, "big.bin"), tmp_path / "big.bin", sha256=hashlib.sha256(body).hexdigest(),
                      size=len(body), backoff_s=0.01, progress=False)
    assert (tmp_path / "big.bin").read_bytes() == body and digest == hashlib.sha256(body).hexdigest()
    assert server.requests == [("big.bin", None), ("big.bin", "bytes=300000-")]
    assert not (tmp_path / "big.bin.part").exists()


def test_download_rejects_a_corrupt_file(server: _Server, tmp_path: Path) -> None:
    server.files["f.txt"] = b"corrupted bytes"
    with pytest.raises(DataError, match=r"has sha256 [0-9a-f]{64}, expected 0{64}: the file was corrupt and is del"):
        download(url(server, "f.txt"), tmp_path / "f.txt", sha256="0" * 64, progress=False)
    assert not (tmp_path / "f.txt").exists() and not (tmp_path / "f.txt.part").exists()


def test_download_http_and_network_errors(server: _Server, tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"/missing.txt: HTTP 404 .*--url-base"):
        download(url(server, "missing.txt"), tmp_path / "m", progress=False)
    server.files["cut.txt"] = b"x" * 1000
    server.drop_after["cut.txt"] = 10
    with pytest.raises(DataError, match=r"failed 1 times \(last: connection closed after 10 of 1000 bytes\).*resumes from .*cut.txt.part"):
        download(url(server, "cut.txt"), tmp_path / "cut.txt", retries=0, progress=False)
    assert (tmp_path / "cut.txt.part").stat().st_size == 10  # kept: the next run resumes from it


def tinystories_files(server: _Server) -> None:
    train = [f"Once upon a time there was a bunny number {i}." for i in range(30)]
    valid = ["Lily found a red ball.", train[3], "The sun was warm."]
    server.files["TinyStories-train.txt"] = (SEP.join(train) + "\n").encode()
    server.files["TinyStories-valid.txt"] = (SEP.join(valid) + "\n").encode()


def test_prepare_tinystories_from_a_local_server(server: _Server, tmp_path: Path) -> None:
    tinystories_files(server)
    server.drop_after["TinyStories-valid.txt"] = 20
    args = dict(tokenizer="bytes", out_dir=tmp_path / "ts", url_base=url(server), download_dir=tmp_path / "dl")
    out = prepare("tinystories", **args)
    meta = load_meta(out)
    assert meta["split"]["rule"] == "published"
    assert meta["documents"] == {"train": 30, "val": 2} and meta["skipped"] == {"duplicate_documents": 1}
    assert documents(out, "val") == ["Lily found a red ball.", "The sun was warm."]
    unverified = {"bytes": False, "sha256": False}  # no checksums known: only the server's size was checked
    assert {s["file"]: s["verified"] for s in meta["sources"]} == {
        "TinyStories-train.txt": unverified, "TinyStories-valid.txt": unverified}
    assert ("TinyStories-valid.txt", "bytes=20-") in server.requests  # the cut transfer resumed
    seen = len(server.requests)
    prepare("tinystories", **args)  # downloaded and prepared already: no request, no rewrite
    assert len(server.requests) == seen


def test_prepare_tinystories_with_a_wrong_checksum_fails_clearly(server: _Server, tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture) -> None:
    tinystories_files(server)
    sums = tmp_path / "sums.json"
    sums.write_text(json.dumps({"TinyStories-train.txt": {"sha256": "ab" * 32}}))
    code, err = run_cli(["prepare", "tinystories", "--url-base", url(server), "--checksums", str(sums),
                         "--tokenizer", "bytes", "--download-dir", str(tmp_path / "dl"), "--out", str(tmp_path / "ts"),
                         "--quiet"], capsys)
    assert code == 2 and err.count("\n") == 1
    assert f"expected {'ab' * 32}: the file was corrupt and is deleted" in err and "--checksums" in err
    assert not (tmp_path / "ts").exists() and not list((tmp_path / "dl").iterdir())


def test_cli_prepare_prints_a_summary(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "in.txt").write_text(SEP.join(f"doc {i}" for i in range(40)))
    assert main(["prepare", "text", str(tmp_path / "in.txt"), "--tokenizer", "bytes", "--out", str(tmp_path / "ds"),
                 "--val-fraction", "0.2", "--max-bytes", "1M", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "bytes (vocab 257, uint16), split hash" in out and "documents" in out
    assert load_meta(tmp_path / "ds")["settings"]["max_bytes"] == 1_000_000
