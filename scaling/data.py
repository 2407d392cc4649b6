"""The data stage: text sources -> tokenizer -> flat token files -> memory-mapped batches.

This module holds what training reads: the tokenizers, the format of a prepared folder with its
``meta.json`` (``load_meta``), and the ``TokenLoader``. Building a folder is ``scaling.prepare``;
its inputs come from ``scaling.sources`` (files) and ``scaling.download`` (TinyStories).

A prepared dataset is a folder ``DIR`` (default ``data/<name>/``) holding:

- ``train.bin``, ``val.bin``: flat token ids, uint16 when the vocabulary has <= 65,535 ids,
  else uint32, no header; every document is followed by the tokenizer's end-of-text token.
- ``meta.json``: tokenizer, vocab size, dtype, token, document and UTF-8 byte counts per split
  (bytes turn a loss per token into bits per byte), split rule, source summary with hashes, skip
  counts (see ``load_meta``). It is written last, so a folder without it is not a dataset.
- ``tokenizer.json``: only for a tokenizer that is not built in (``bpe:VOCAB`` trained on the
  train split by ``scaling prepare``, or ``hf:PATH`` copied), a Hugging Face ``tokenizers`` file
  whose sha256 meta.json records; ``tokenizer_of`` loads it for every reader.
- ``manifest.jsonl``: one line per input file (path, bytes, sha256, documents kept, skip counts).

``scaling.prepare.prepare`` builds a folder from a source (``tinystories``, ``text PATH...``,
``pysrc``); ``TokenLoader`` serves (x, y) batches from it; ``describe`` summarises it.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Iterable, Literal, Mapping

import numpy as np

from scaling.errors import ConfigError, DataError

__all__ = [
    "META_VERSION",
    "SPLITS",
    "META_KEYS",
    "TOKENIZER_FILE",
    "EOT_TEXT",
    "Tokenizer",
    "HFTokenizer",
    "get_tokenizer",
    "is_saved_tokenizer",
    "parse_bpe_vocab",
    "load_hf_tokenizer",
    "train_bpe",
    "tokenizers_module",
    "tokenizer_of",
    "tokenizer_record",
    "bytes_per_token",
    "token_dtype",
    "load_meta",
    "TokenLoader",
    "describe",
]

META_VERSION = 1
SPLITS = ("train", "val")
# Keys every reader of meta.json may rely on (the on-disk contract); writers may add more.
META_KEYS = ("name", "tokenizer", "vocab_size", "eot_token", "dtype", "tokens", "documents",
             "split", "sources", "skipped", "created", "version")
TOKENIZER_FILE = "tokenizer.json"  # a saved (bpe:/hf:) tokenizer inside a prepared folder
EOT_TEXT = "<|endoftext|>"  # GPT-2's end-of-text token, the separator every tokenizer here appends
# Saved tokenizers are named "<kind>:<argument>": bpe:VOCAB (trained by prepare) or hf:PATH (copied).
_SAVED_KINDS = ("bpe", "hf")


# ----------------------------------------------------------------------------- tokenizers


class Tokenizer:
    """A built-in tokenizer by name: ``bytes`` (UTF-8 bytes + one end-of-text id) or a tiktoken encoding.

    ``encode`` treats its input as ordinary text: a literal ``<|endoftext|>`` in a document is
    encoded as text, never as the special token, so documents cannot forge separators.
    """

    def __init__(self, name: str, encoding: Any = None) -> None:
        self.name = name
        self._enc = encoding
        if encoding is None:
            # 256 byte values plus one end-of-text id, so the separator can never collide
            # with a byte that occurs in the text.
            self.vocab_size = 257
            self.eot_token = 256
        else:
            self.vocab_size = int(encoding.n_vocab)
            self.eot_token = int(encoding.eot_token)

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` (ordinary text, no special tokens)."""
        if self._enc is None:
            return list(text.encode("utf-8"))
        return self._enc.encode_ordinary(text)

    def encode_array(self, text: str) -> np.ndarray:
        """``encode`` as a uint32 numpy array, without building a Python list in between."""
        if self._enc is None:
            return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.uint32)
        # encode() with no special tokens allowed and none disallowed is encode_ordinary
        # (tiktoken's own docstring), and encode_to_numpy skips building a list of ints.
        return self._enc.encode_to_numpy(text, allowed_special=set(), disallowed_special=())

    def encode_many(self, texts: list[str]) -> list[np.ndarray]:
        """``encode_array`` of each text (a tokenizer with its own threads does them in parallel)."""
        return [self.encode_array(t) for t in texts]

    def decode(self, ids: list[int]) -> str:
        """Text of ``ids``; the end-of-text id decodes to ``<|endoftext|>``."""
        if self._enc is not None:
            return self._enc.decode([int(i) for i in ids])  # numpy/torch integers too
        parts, run = [], bytearray()
        for i in ids:
            if i == self.eot_token:
                parts.append(run.decode("utf-8", errors="replace") + "<|endoftext|>")
                run = bytearray()
            else:
                run.append(i)
        return "".join(parts) + run.decode("utf-8", errors="replace")

    def __repr__(self) -> str:
        return f"Tokenizer({self.name!r}, vocab_size={self.vocab_size}, eot_token={self.eot_token})"


class HFTokenizer(Tokenizer):
    """A Hugging Face ``tokenizers`` tokenizer.json: ``bpe:VOCAB`` (trained by prepare) or ``hf:PATH``.

    ``sha256`` is the hash of the JSON text it was loaded from, the identity meta.json records.
    A literal ``<|endoftext|>`` in a document is encoded as text here too (``encode_special_tokens``).
    """

    def __init__(self, name: str, text: str) -> None:
        hf = tokenizers_module().Tokenizer.from_str(text)
        # Otherwise added special tokens are matched in the input, and a document could forge
        # the separator (add_special_tokens=False only turns off the post-processor's templates).
        hf.encode_special_tokens = True
        self.name, self._hf, self.text = name, hf, text
        self.sha256 = hashlib.sha256(text.encode("utf-8")).hexdigest()
        vocab = hf.get_vocab(with_added_tokens=True)
        eot = next((t for t in _EOT_CANDIDATES if t in vocab), None)
        if eot is None:
            raise DataError(f"tokenizer {name!r} has no end-of-text token (looked for {', '.join(_EOT_CANDIDATES)}); "
                            f"add {EOT_TEXT!r} to its vocabulary as a special token")
        self.eot_token = vocab[eot]
        self.vocab_size = max(vocab.values()) + 1  # ids may have gaps: the largest id sets the width

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` (ordinary text, no special tokens)."""
        return self._hf.encode(text, add_special_tokens=False).ids

    def encode_array(self, text: str) -> np.ndarray:
        """``encode`` as a uint32 numpy array."""
        return np.asarray(self.encode(text), dtype=np.uint32)

    def encode_many(self, texts: list[str]) -> list[np.ndarray]:
        """``encode_array`` of each text; the library spreads the batch over its own threads."""
        return [np.asarray(e.ids, dtype=np.uint32) for e in self._hf.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids: list[int]) -> str:
        """Text of ``ids``; the end-of-text id decodes to its own text (``<|endoftext|>``)."""
        return self._hf.decode([int(i) for i in ids], skip_special_tokens=False)


# End-of-text tokens of common tokenizer.json files (GPT-2/BPE here, Llama 3, Llama 2/T5, Gemma), in
# order of preference.
_EOT_CANDIDATES = (EOT_TEXT, "<|end_of_text|>", "</s>", "<eos>")


def tokenizers_module() -> Any:
    """The ``tokenizers`` package, or a one-line DataError saying how to install it."""
    try:
        import tokenizers
    except ImportError:
        raise DataError("bpe:/hf: tokenizers need the 'tokenizers' package: pip install 'scaling[bpe]'") from None
    return tokenizers


_TOKENIZERS: dict[str, Tokenizer] = {}


def is_saved_tokenizer(name: str) -> bool:
    """Whether ``name`` is a tokenizer saved as a file with its data (``bpe:...``, ``hf:...``)."""
    return name.split(":", 1)[0] in _SAVED_KINDS and ":" in name


def get_tokenizer(name: str) -> Tokenizer:
    """The built-in tokenizer called ``name``: ``"bytes"`` or a tiktoken encoding (``gpt2``, ...).

    A saved tokenizer (``bpe:VOCAB``, ``hf:PATH``) lives in its data folder: see ``tokenizer_of``.

    Raises
    ------
    DataError
        The name is unknown or saved, or tiktoken cannot load the encoding's BPE file (offline, no cache).
    """
    if name in _TOKENIZERS:
        return _TOKENIZERS[name]
    if is_saved_tokenizer(name):
        raise DataError(f"tokenizer {name!r} is saved with its data: load it with tokenizer_of(meta, data_dir)")
    if name == "bytes":
        tok = Tokenizer("bytes")
    else:
        import tiktoken

        known = tiktoken.list_encoding_names()
        if name not in known:
            raise DataError(f"--tokenizer {name!r} is unknown: use 'bytes', bpe:VOCAB, hf:PATH or a tiktoken "
                            f"encoding ({', '.join(known)})")
        try:
            enc = tiktoken.get_encoding(name)
        except Exception as e:  # network errors, bad cache files, hash mismatches: all one fix
            cache = os.environ.get("TIKTOKEN_CACHE_DIR")
            where = f"TIKTOKEN_CACHE_DIR={cache} does not hold it" if cache else "TIKTOKEN_CACHE_DIR is not set"
            raise DataError(
                f"tokenizer {name!r} could not be loaded ({type(e).__name__}; {where}): tiktoken downloads "
                f"its BPE file on first use, so go online once or set TIKTOKEN_CACHE_DIR to a folder "
                f"holding the cached file, or use --tokenizer bytes") from None
        tok = Tokenizer(name, enc)
    _TOKENIZERS[name] = tok
    return tok


def parse_bpe_vocab(name: str) -> int:
    """VOCAB of ``bpe:VOCAB``: an integer >= 257 (the 256 byte values plus end-of-text).

    Raises
    ------
    ConfigError
        VOCAB is not an integer or is below 257.
    """
    arg = name.split(":", 1)[1]
    if not (arg.isdigit() and int(arg) >= 257):
        raise ConfigError(f"--tokenizer {name!r}: VOCAB must be an integer >= 257 (256 byte values + end-of-text), "
                          f"e.g. bpe:16384")
    return int(arg)


def load_hf_tokenizer(name: str, path: str | os.PathLike[str]) -> HFTokenizer:
    """The tokenizer of a local ``tokenizer.json`` (or a folder holding one), named ``name``.

    Raises
    ------
    DataError
        The file is missing or is not a tokenizer.json the ``tokenizers`` package can read.
    """
    file = Path(path) / TOKENIZER_FILE if Path(path).is_dir() else Path(path)
    if not file.is_file():
        raise DataError(f"--tokenizer {name}: {file} does not exist; give a local tokenizer.json or a folder holding one")
    tokenizers_module()  # a missing package is its own error, not "unreadable"
    try:
        return HFTokenizer(name, file.read_text(encoding="utf-8"))
    except DataError:
        raise
    except Exception as e:  # the Rust parser's errors, bad UTF-8: all mean "not a tokenizer.json"
        raise DataError(f"--tokenizer {name}: not a readable tokenizer.json ({type(e).__name__}: "
                        f"{str(e).splitlines()[0] if str(e) else ''}); give a Hugging Face tokenizers file") from None


def train_bpe(texts: Iterable[str], vocab_size: int, name: str) -> HFTokenizer:
    """A byte-level BPE of ``vocab_size`` ids (256 bytes, ``<|endoftext|>``, merges) trained on ``texts``.

    GPT-2's scheme (Radford et al. 2019, sec. 2.2): its pre-tokenizing regex over the 256 byte
    symbols, so any text round-trips exactly with no unknown token; no normalizer, no prefix space.
    The result may have fewer ids than asked when the corpus runs out of pairs to merge.
    """
    tk = tokenizers_module()
    hf = tk.Tokenizer(tk.models.BPE())
    hf.pre_tokenizer = tk.pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = tk.decoders.ByteLevel()
    trainer = tk.trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOT_TEXT], show_progress=False,
                                     initial_alphabet=tk.pre_tokenizers.ByteLevel.alphabet())
    hf.train_from_iterator(texts, trainer=trainer)
    return HFTokenizer(name, hf.to_str())


def _saved_text(meta: Mapping[str, Any], data_dir: str | os.PathLike[str] | None) -> str:
    """The tokenizer.json text of a saved tokenizer: the meta's own copy (a checkpoint's) or else
    ``data_dir/tokenizer.json``, checked against the meta's ``tokenizer_sha256``."""
    name, text = meta["tokenizer"], meta.get("tokenizer_json")
    where = "the checkpoint's tokenizer"
    if text is None:
        if data_dir is None:
            raise DataError(f"tokenizer {name!r}: no data folder given to read {TOKENIZER_FILE} from")
        path = Path(data_dir) / TOKENIZER_FILE
        where = str(path)
        if not path.is_file():
            raise DataError(f"{path} is missing but meta.json names tokenizer {name!r}; "
                            f"re-run scaling prepare --force for {data_dir}")
        text = path.read_text(encoding="utf-8")
    if hashlib.sha256(text.encode("utf-8")).hexdigest() != meta.get("tokenizer_sha256"):
        raise DataError(f"{where} does not match the sha256 its token ids were made with (changed after "
                        f"prepare); re-run scaling prepare --force")
    return text


def tokenizer_of(meta: Mapping[str, Any], data_dir: str | os.PathLike[str] | None = None) -> Tokenizer:
    """The tokenizer a dataset's meta.json (or a checkpoint's data meta) names.

    A built-in name loads by name. A saved one is read from the meta's own ``tokenizer_json``
    (checkpoints carry it) or else from ``data_dir/tokenizer.json``, and must hash to the
    meta's ``tokenizer_sha256``.

    Raises
    ------
    DataError
        The tokenizer file is missing or was changed after the data was tokenized with it.
    """
    name = meta["tokenizer"]
    return HFTokenizer(name, _saved_text(meta, data_dir)) if is_saved_tokenizer(name) else get_tokenizer(name)


def tokenizer_record(meta: Mapping[str, Any], data_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """What a checkpoint keeps of its data's tokenizer: name, vocab_size and eot_token, and for a saved
    tokenizer its sha256 and the tokenizer.json text itself, so ``scaling sample`` needs no data folder.

    Reads the file only: training does not need the ``tokenizers`` package.
    """
    record = {k: meta[k] for k in ("tokenizer", "vocab_size", "eot_token")}
    if is_saved_tokenizer(meta["tokenizer"]):
        record.update(tokenizer_sha256=meta["tokenizer_sha256"], tokenizer_json=_saved_text(meta, data_dir))
    return record


def bytes_per_token(text_bytes: int, tokens: int) -> float | None:
    """UTF-8 bytes of text per token, end-of-text tokens included (the tokens a loss is averaged over,
    so bits per byte = loss in nats / ln 2 / this); None for no tokens."""
    return text_bytes / tokens if tokens else None


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 when every id fits (vocab_size <= 65,535, as the format promises), else uint32."""
    return np.dtype(np.uint16 if vocab_size <= 65535 else np.uint32)


# ----------------------------------------------------------------------------- meta


def load_meta(data_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and check ``DIR/meta.json`` of a prepared dataset.

    Raises
    ------
    DataError
        The folder or its meta.json is missing, unreadable, or lacks a contract key.
    """
    path = Path(data_dir) / "meta.json"
    fix = f"prepare it with: scaling prepare pysrc --out {data_dir}"
    if not path.is_file():
        what = ("folder does not exist" if not Path(data_dir).is_dir()
                else "has no meta.json (not prepared, or interrupted)")
        raise DataError(f"data folder {data_dir}: {what}; {fix}")
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: unreadable ({e}); {fix}") from None
    missing = [k for k in META_KEYS if k not in meta] if isinstance(meta, dict) else list(META_KEYS)
    if missing:
        raise DataError(f"{path}: missing keys {', '.join(missing)}; {fix}")
    if meta["dtype"] not in ("uint16", "uint32"):
        raise DataError(f"{path}: dtype must be uint16 or uint32 (got {meta['dtype']!r}); {fix}")
    return meta


def describe(data_dir: str | os.PathLike[str]) -> str:
    """A few lines summarising a prepared folder: tokenizer, tokens and documents per split, skips."""
    meta = load_meta(data_dir)
    lines = [f"{data_dir}: {meta['tokenizer']} (vocab {meta['vocab_size']:,}, {meta['dtype']}), "
             f"split {meta['split'].get('rule')}"]
    per_token = meta.get("bytes_per_token") or {}
    for s in SPLITS:
        bpt = f"  {per_token[s]:.3f} bytes/token" if per_token.get(s) else ""
        lines.append(f"  {s:5s} {meta['tokens'][s]:>14,} tokens  {meta['documents'][s]:>10,} documents{bpt}")
    if "bytes_per_token_gpt2" in meta:  # a saved tokenizer: how it compresses beside GPT-2's
        gpt2 = meta["bytes_per_token_gpt2"]["val"]
        lines.append(f"  gpt2 on the same val text: {gpt2:.3f} bytes/token" if gpt2 else
                     "  gpt2 on the same val text: not measured (tiktoken could not load gpt2)")
    if meta.get("tokenizer_train_s") is not None:
        lines.append(f"  {meta['tokenizer']} trained on the train split in {meta['tokenizer_train_s']:.1f} s")
    skipped = ", ".join(f"{v:,} {k}" for k, v in meta["skipped"].items())
    lines.append(f"  skipped: {skipped or 'nothing'}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- loader


class TokenLoader:
    """Batches of (x, y) windows from one split of a prepared folder.

    ``mode="random"``: each row is a window of context+1 tokens at a uniformly random offset;
    batch ``b`` of rank ``r`` is drawn from a generator seeded by ``(seed, r, b)``, so batches are
    reproducible, independent of how many were drawn before, and differ between DDP ranks.

    ``mode="sequential"``: consecutive windows with stride ``context`` (every token after the
    first is a target exactly once per pass) from the start of the split, interleaved across
    ranks, wrapping around at the end; the tail shorter than a window is skipped on each pass.

    ``tokens_consumed`` counts target tokens served by *this* loader (this rank) and ``epochs``
    is ``tokens_consumed / n_tokens``, so a trainer can honour a token budget and an epoch limit.
    """

    def __init__(self, data_dir: str | os.PathLike[str], split: Literal["train", "val"], context: int,
                 batch_size: int, *, seed: int = 0, mode: Literal["random", "sequential"] = "random",
                 rank: int = 0, world_size: int = 1) -> None:
        if split not in SPLITS:
            raise DataError(f"split must be 'train' or 'val' (got {split!r})")
        if mode not in ("random", "sequential"):
            raise DataError(f"loader mode must be 'random' or 'sequential' (got {mode!r})")
        if context < 1 or batch_size < 1:
            raise DataError(f"context and batch_size must be >= 1 (got {context}, {batch_size})")
        if not 0 <= rank < world_size:
            raise DataError(f"rank must be in [0, world_size) (got rank {rank}, world_size {world_size})")
        if seed < 0:
            raise DataError(f"loader seed must be >= 0 (got {seed})")
        self.data_dir = Path(data_dir)
        meta = load_meta(self.data_dir)
        self.path = self.data_dir / f"{split}.bin"
        self.dtype = np.dtype(meta["dtype"])
        if not self.path.is_file():
            raise DataError(f"{self.path} is missing; re-run scaling prepare for {self.data_dir}")
        size = self.path.stat().st_size
        expected = int(meta["tokens"][split])
        if size != expected * self.dtype.itemsize:
            raise DataError(f"{self.path} holds {size // self.dtype.itemsize} tokens but meta.json says "
                            f"{expected}; re-run scaling prepare for {self.data_dir}")
        if expected < context + 1:
            raise DataError(f"{self.path} has {expected} tokens, fewer than context+1 = {context + 1}; "
                            f"use a shorter context or prepare more text (or a larger --val-fraction)")
        self.split, self.mode, self.context, self.batch_size = split, mode, context, batch_size
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.n_tokens = expected
        self.vocab_size = int(meta["vocab_size"])
        self.batches = 0  # batches served so far by this loader

    @property
    def tokens_consumed(self) -> int:
        """Target tokens served so far by this loader: batches * batch_size * context."""
        return self.batches * self.batch_size * self.context

    @property
    def epochs(self) -> float:
        """Passes over this split served by this loader (``tokens_consumed / n_tokens``)."""
        return self.tokens_consumed / self.n_tokens

    def _offsets(self, batch: int) -> np.ndarray:
        """Start offsets of the rows of batch number ``batch`` of this rank."""
        if self.mode == "random":
            rng = np.random.default_rng([self.seed, self.rank, batch])
            return rng.integers(0, self.n_tokens - self.context, size=self.batch_size)
        windows = (self.n_tokens - 1) // self.context
        first = (batch * self.world_size + self.rank) * self.batch_size
        return (np.arange(first, first + self.batch_size) % windows) * self.context

    def next_batch(self) -> tuple[np.ndarray, np.ndarray]:
        """The next ``(x, y)``: int64 arrays of shape (batch_size, context), y = x shifted by one."""
        # Open the memmap anew for every batch: a long-lived np.memmap keeps every page it has
        # touched mapped, so the process's memory grows with the split (nanoGPT's train.py
        # does the same for this reason).
        data = np.memmap(self.path, dtype=self.dtype, mode="r")
        rows = self._offsets(self.batches)[:, None] + np.arange(self.context + 1)
        windows = data[rows].astype(np.int64)
        del data
        self.batches += 1
        return windows[:, :-1], windows[:, 1:]

    def state_dict(self) -> dict[str, Any]:
        """JSON-safe position; ``load_state_dict`` of it continues the exact same batch sequence."""
        return {"split": self.split, "mode": self.mode, "context": self.context, "batch_size": self.batch_size,
                "seed": self.seed, "rank": self.rank, "world_size": self.world_size,
                "n_tokens": self.n_tokens, "batches": self.batches}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume from ``state_dict()``; the sampling settings and the split must be the same."""
        mine = self.state_dict()
        wrong = [f"{k} {state.get(k)!r} != {mine[k]!r}" for k in mine if k != "batches" and state.get(k) != mine[k]]
        if wrong:
            raise DataError(f"loader state for {self.path} does not match this loader ({'; '.join(wrong)}); "
                            f"resume with the same data folder and loader settings")
        self.batches = int(state["batches"])
