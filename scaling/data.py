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
- ``manifest.jsonl``: one line per input file (path, bytes, sha256, documents kept, skip counts).

``scaling.prepare.prepare`` builds a folder from a source (``tinystories``, ``text PATH...``,
``pysrc``); ``TokenLoader`` serves (x, y) batches from it; ``describe`` summarises it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Literal

import numpy as np

from scaling.errors import DataError

__all__ = [
    "META_VERSION",
    "SPLITS",
    "META_KEYS",
    "Tokenizer",
    "get_tokenizer",
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


# ----------------------------------------------------------------------------- tokenizers


class Tokenizer:
    """A tokenizer by name: ``bytes`` (UTF-8 bytes + one end-of-text id) or a tiktoken encoding.

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


_TOKENIZERS: dict[str, Tokenizer] = {}


def get_tokenizer(name: str) -> Tokenizer:
    """The tokenizer called ``name``: ``"bytes"`` or a tiktoken encoding (``gpt2``, ``cl100k_base``, ...).

    Raises
    ------
    DataError
        The name is unknown, or tiktoken cannot load the encoding's BPE file (offline, no cache).
    """
    if name in _TOKENIZERS:
        return _TOKENIZERS[name]
    if name == "bytes":
        tok = Tokenizer("bytes")
    else:
        import tiktoken

        known = tiktoken.list_encoding_names()
        if name not in known:
            raise DataError(f"--tokenizer {name!r} is unknown: use 'bytes' or a tiktoken encoding "
                            f"({', '.join(known)})")
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
    for s in SPLITS:
        lines.append(f"  {s:5s} {meta['tokens'][s]:>14,} tokens  {meta['documents'][s]:>10,} documents")
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
