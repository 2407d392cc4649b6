"""``scaling prepare``: a corpus -> a prepared dataset folder (its format: ``scaling.data``).

The inputs come from ``scaling.sources`` (``text``, ``pysrc``) or ``scaling.download``
(``tinystories``). Each document is de-duplicated exactly, assigned to train or val by its hash
(or keeps its published split), tokenized in worker processes and appended, in input order, to
its split's token file; ``manifest.jsonl`` and ``meta.json`` come last (``prepare``). A
``bpe:VOCAB`` tokenizer is trained on the train split's documents first, in a pass of its own.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import sys
import time
from collections import Counter, deque
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, BinaryIO, Iterator, Literal, Sequence

import numpy as np

from scaling.config import atomic_write_text, writes_to
from scaling.data import (META_VERSION, SPLITS, TOKENIZER_FILE, HFTokenizer, Tokenizer, bytes_per_token, get_tokenizer,
                          is_saved_tokenizer, load_hf_tokenizer, load_meta, parse_bpe_vocab, token_dtype,
                          tokenizer_record, tokenizers_module, train_bpe)
from scaling.download import TINYSTORIES_FILES, _tinystories_inputs
from scaling.errors import ConfigError, DataError
from scaling.sources import (INPUT_SUFFIXES, _cap, _DocOptions, _documents, _file_sha256, _Input, _pysrc_inputs,
                             _text_inputs)

__all__ = ["prepare"]

_CHUNK_BYTES = 1 << 20  # text per tokenization task: large enough to amortise pickling
# Document status codes a tokenization worker returns, and the skip counter each one feeds.
_OK, _BINARY, _NON_UTF8 = 0, 1, 2
_STATUS_NAMES = {_BINARY: "binary_documents", _NON_UTF8: "non_utf8_documents"}


def _doc_text(raw: bytes) -> tuple[int, str | None]:
    """(status, text) of a raw document: binary (NUL bytes) and non-UTF-8 ones have no text."""
    if b"\0" in raw:
        return _BINARY, None
    try:
        return _OK, raw.decode("utf-8")
    except UnicodeDecodeError:
        return _NON_UTF8, None


def _encode_chunk(task: tuple[Tokenizer | str, list[bytes]]) -> tuple[np.ndarray, np.ndarray]:
    """Worker: tokenize documents, each followed by end-of-text. Returns (ids, status per document).

    The task names its tokenizer in a worker process (a built-in loads by name, cheaper than
    pickling it) or passes it in this one. Documents without text (``_doc_text``) are skipped.
    """
    spec, docs = task
    tok = get_tokenizer(spec) if isinstance(spec, str) else spec
    eot = np.array([tok.eot_token], dtype=np.uint32)
    checked = [_doc_text(raw) for raw in docs]
    status = np.array([st for st, _ in checked], dtype=np.int8)
    parts = [part for ids in tok.encode_many([t for _, t in checked if t is not None]) for part in (ids, eot)]
    ids = np.concatenate(parts) if parts else np.zeros(0, dtype=np.uint32)
    assert not ids.size or int(ids.max()) < tok.vocab_size, "token id outside the vocabulary"
    return ids.astype(token_dtype(tok.vocab_size), copy=False), status


def _worker_init() -> None:
    """Workers ignore Ctrl-C: the parent handles it and terminates the pool."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _make_pool(workers: int) -> Any:
    """A process pool of ``workers``, or None to tokenize in this process."""
    if workers <= 1:
        return None
    import multiprocessing as mp

    # fork shares the already-loaded BPE ranks with the workers (no re-load per process);
    # elsewhere fork is unsafe (macOS) and spawn is the only choice.
    ctx = mp.get_context("fork" if sys.platform == "linux" else "spawn")
    return ctx.Pool(workers, initializer=_worker_init)


def _ordered(pool: Any, tasks: Iterator[tuple[Any, tuple[Tokenizer | str, list[bytes]]]],
             window: int) -> Iterator[tuple[Any, tuple[np.ndarray, np.ndarray]]]:
    """``(meta, _encode_chunk(payload))`` for each task, in task order, at most ``window`` in flight."""
    if pool is None:
        for meta, payload in tasks:
            yield meta, _encode_chunk(payload)
        return
    pending: deque = deque()
    for meta, payload in tasks:
        pending.append((meta, pool.apply_async(_encode_chunk, (payload,))))
        if len(pending) >= window:
            m, r = pending.popleft()
            yield m, r.get()
    while pending:
        m, r = pending.popleft()
        yield m, r.get()


@dataclass
class _PassResult:
    """Counts from one tokenization pass over the inputs."""

    tokens: Counter
    documents: Counter
    text_bytes: Counter
    skipped: Counter
    per_file: list[Counter]
    min_train: bytes | None = None  # smallest document hash in train: the fallback val document


def _unique_documents(inputs: list[_Input], opts: _DocOptions, skipped: Counter) -> Iterator[tuple[int, bytes, bytes]]:
    """(input index, 16-byte hash, raw bytes) of each non-empty document, first occurrence only."""
    seen: set[bytes] = set()
    for i, inp in enumerate(inputs):
        for doc in _documents(inp, opts, skipped):
            if not doc.strip():
                skipped["empty_documents"] += 1
                continue
            # Exact de-duplication: 128 bits of sha256 make a false match practically impossible.
            h = hashlib.sha256(doc).digest()[:16]
            if h in seen:
                skipped["duplicate_documents"] += 1
                continue
            seen.add(h)
            yield i, h, doc


def _split_of(inp: _Input, h: bytes, threshold: int, forced_val: set[bytes]) -> str:
    """A document's split: its input's published one, else val iff its hash's first 8 bytes < threshold."""
    return inp.split or ("val" if h in forced_val or int.from_bytes(h[:8], "big") < threshold else "train")


def _val_threshold(inputs: list[_Input], opts: _DocOptions, val_bytes: int) -> int:
    """The hash threshold that puts the usable documents of smallest hash, up to ``val_bytes`` of
    text (the last one whole), in val: the same hash rule as --val-fraction, sized in bytes."""
    keys, sizes = [], []
    for _, h, doc in _unique_documents(inputs, opts, Counter()):
        if _doc_text(doc)[1] is not None:  # what the tokenize pass will keep
            keys.append(int.from_bytes(h[:8], "big"))
            sizes.append(len(doc))
    order = np.argsort(np.array(keys, dtype=np.uint64), kind="stable")
    total = np.cumsum(np.array(sizes, dtype=np.int64)[order])
    last = int(np.searchsorted(total, val_bytes))  # the first document that reaches val_bytes
    if last >= len(keys) - 1:
        raise ConfigError(f"--val-bytes {val_bytes:,} leaves no text to train on (the usable documents hold "
                          f"{int(total[-1]) if len(keys) else 0:,} bytes); ask for less")
    return keys[order[last]] + 1


def _train_texts(inputs: list[_Input], opts: _DocOptions, threshold: int, forced_val: set[bytes]) -> Iterator[str]:
    """Text of each usable train document, in input order: what a BPE tokenizer is trained on."""
    for i, h, doc in _unique_documents(inputs, opts, Counter()):
        text = _doc_text(doc)[1]
        if text is not None and _split_of(inputs[i], h, threshold, forced_val) == "train":
            yield text


def _tokenize_pass(inputs: list[_Input], opts: _DocOptions, tok: Tokenizer, threshold: int,
                   forced_val: set[bytes], outs: dict[str, BinaryIO], pool: Any, workers: int,
                   progress: bool) -> _PassResult:
    """Read, de-duplicate, split and tokenize every document; append the ids to ``outs[split]``."""
    from tqdm import tqdm

    res = _PassResult(Counter(), Counter(), Counter(), Counter(), [Counter() for _ in inputs])
    spec: Tokenizer | str = tok if pool is None else tok.name

    def tasks() -> Iterator[tuple[Any, tuple[Tokenizer | str, list[bytes]]]]:
        docs: dict[str, list[bytes]] = {s: [] for s in SPLITS}
        metas: dict[str, list[tuple[int, bytes, int]]] = {s: [] for s in SPLITS}
        size = Counter()
        for i, h, doc in _unique_documents(inputs, opts, res.skipped):
            split = _split_of(inputs[i], h, threshold, forced_val)
            docs[split].append(doc)
            metas[split].append((i, h, len(doc)))
            size[split] += len(doc)
            if size[split] >= _CHUNK_BYTES:
                yield (split, metas[split], size[split]), (spec, docs[split])
                docs[split], metas[split], size[split] = [], [], 0
        for split in SPLITS:
            if docs[split]:
                yield (split, metas[split], size[split]), (spec, docs[split])

    with tqdm(unit="B", unit_scale=True, desc=f"tokenize ({tok.name})", disable=not progress, file=sys.stderr) as bar:
        for (split, metas, nbytes), (ids, status) in _ordered(pool, tasks(), window=2 * workers + 2):
            with writes_to(Path(outs[split].name).parent):
                # write(), not ndarray.tofile: tofile's full-disk error carries no errno to name the cause.
                outs[split].write(ids.tobytes())
            res.tokens[split] += int(ids.size)
            for (i, h, n), s in zip(metas, status.tolist()):
                if s == _OK:
                    res.documents[split] += 1
                    res.text_bytes[split] += n
                    res.per_file[i]["documents"] += 1
                    if split == "train" and (res.min_train is None or h < res.min_train):
                        res.min_train = h
                else:
                    res.skipped[_STATUS_NAMES[s]] += 1
                    res.per_file[i][_STATUS_NAMES[s]] += 1
            bar.update(nbytes)
    return res


def _default_name(source: str, paths: Sequence[str]) -> str:
    """``tinystories``/``pysrc``, or for text the first input's name without suffixes (``english``)."""
    if source != "text" or not paths:
        return source
    stem = Path(paths[0].rstrip("/")).name.split(".")[0]
    return stem if stem and not glob.has_magic(stem) else "text"


def _up_to_date(out_dir: Path, fingerprint: str) -> bool:
    """Whether ``out_dir`` already holds a complete dataset built from the same inputs and settings."""
    try:
        meta = load_meta(out_dir)
    except DataError:
        return False
    itemsize = np.dtype(meta["dtype"]).itemsize
    try:
        tokenizer_record(meta, out_dir)  # a saved tokenizer's file is there and unchanged
    except DataError:
        return False
    return meta.get("fingerprint") == fingerprint and all(
        (out_dir / f"{s}.bin").is_file() and (out_dir / f"{s}.bin").stat().st_size == meta["tokens"][s] * itemsize
        for s in SPLITS)


def _check_options(source: str, paths: Sequence[str], val_fraction: float | None, val_bytes: int | None,
                   workers: int | None, max_bytes: int | None, doc_sep: str) -> None:
    """Raise ConfigError naming the first bad option."""
    if source not in ("tinystories", "text", "pysrc"):
        raise ConfigError(f"source must be tinystories, text or pysrc (got {source!r})")
    if paths and source != "text":
        raise ConfigError(f"PATH arguments are only read by 'scaling prepare text' (got {list(paths)} for {source})")
    if val_fraction is not None and not 0 < val_fraction < 1:
        raise ConfigError(f"--val-fraction must be in (0, 1) (got {val_fraction})")
    if val_bytes is not None:
        if val_fraction is not None:
            raise ConfigError("--val-fraction and --val-bytes both size the val split: give one of them")
        if source == "tinystories":
            raise ConfigError("--val-bytes: tinystories keeps its published val split; drop the option")
        if val_bytes < 1:
            raise ConfigError(f"--val-bytes must be >= 1 (got {val_bytes})")
    if workers is not None and workers < 1:
        raise ConfigError(f"--workers must be >= 1 (got {workers})")
    if max_bytes is not None and max_bytes < 1:
        raise ConfigError(f"--max-bytes must be >= 1 (got {max_bytes})")
    if not doc_sep:
        raise ConfigError("--doc-sep must not be empty (use 'none' for one document per file)")


def prepare(source: Literal["tinystories", "text", "pysrc"], paths: Sequence[str] = (), *, tokenizer: str = "gpt2",
            out_dir: str | os.PathLike[str] | None = None, name: str | None = None, val_fraction: float | None = None,
            val_bytes: int | None = None, workers: int | None = None, max_bytes: int | None = None, doc_sep: str = "<|endoftext|>",
            field: str = "text", site_packages: bool = False, url_base: str | None = None,
            checksums: str | os.PathLike[str] | None = None, download_dir: str | os.PathLike[str] | None = None,
            force: bool = False, progress: bool = False) -> Path:
    """Build a prepared dataset folder (train.bin, val.bin, manifest.jsonl, meta.json); return it.

    Parameters
    ----------
    source
        ``tinystories`` (download the published train/valid files; their split is kept),
        ``text`` (``paths``: files, folders, globs of .txt/.md/.jsonl/.parquet, optionally
        .gz/.xz/.zst) or ``pysrc`` (this interpreter's stdlib, plus site-packages if asked).
    tokenizer
        ``bytes``, a tiktoken encoding name, ``bpe:VOCAB`` (a byte-level BPE of VOCAB ids trained
        here on the train split) or ``hf:PATH`` (a local tokenizer.json, copied). The last two
        are saved as ``tokenizer.json`` in the folder and need the ``tokenizers`` package.
    val_fraction
        text/pysrc: a document goes to val iff the first 8 bytes of its sha256, read as a
        fraction of 2**64, are below this (default 0.01); if none does, the document with the
        smallest hash does.
    val_bytes
        text/pysrc, instead of ``val_fraction``: val is the documents of smallest hash until they
        hold this many bytes of text (the same hash rule, its threshold set by size).
    workers
        Tokenizer processes (default: the usable CPU cores); the output does not depend on it.
    max_bytes
        text/pysrc: whole files in order until the next would pass this many bytes on disk;
        tinystories: the first ``max_bytes`` of each file.
    doc_sep
        Text files are split into documents at this string (default TinyStories' ``<|endoftext|>``);
        ``blank-line`` splits at empty lines, ``none`` keeps each file whole (pysrc always does).
    field
        The JSON field / Parquet column holding the text.
    force
        Rebuild even when ``out_dir`` already holds this exact dataset (otherwise a no-op).

    Raises
    ------
    ConfigError, DataError
        A bad option or input; nothing is left in ``out_dir`` that looks complete.
    """
    _check_options(source, paths, val_fraction, val_bytes, workers, max_bytes, doc_sep)
    # Fail fast, before reading or downloading anything.
    bpe_vocab = parse_bpe_vocab(tokenizer) if tokenizer.startswith("bpe:") else None
    tok: Tokenizer | None = None  # a BPE exists once trained, below
    if bpe_vocab is not None:
        tok_settings: dict[str, Any] = {"trainer": f"tokenizers {tokenizers_module().__version__}"}
    elif tokenizer.startswith("hf:"):
        tok = load_hf_tokenizer(tokenizer, tokenizer[3:])
        tok_settings = {"sha256": tok.sha256}
    else:
        tok, tok_settings = get_tokenizer(tokenizer), {}
    name = name or _default_name(source, paths)
    out = Path(out_dir) if out_dir is not None else Path("data") / name
    sep = {"none": None, "blank-line": b"\n\n"}.get(doc_sep, doc_sep.encode("utf-8"))
    opts = _DocOptions(doc_sep=None if source == "pysrc" else sep, field=field)
    downloads: dict[str, dict[str, Any]] = {}
    if source == "tinystories":
        inputs, downloads = _tinystories_inputs(url_base, checksums, Path(download_dir or out.parent / "downloads"),
                                                max_bytes, progress)
        split_rule: dict[str, Any] = {"rule": "published", **{f["split"]: n for n, f in TINYSTORIES_FILES.items()}}
    else:
        inputs = _cap(_text_inputs(paths) if source == "text" else _pysrc_inputs(site_packages), max_bytes)
        if not inputs:
            raise DataError(f"no input files found in {', '.join(paths) or 'the Python source tree'}; "
                            f"text reads {', '.join(INPUT_SUFFIXES)} (text and jsonl optionally .gz/.xz/.zst)")
        if val_bytes is None:
            val_fraction = val_fraction or 0.01
        split_rule = {"rule": "hash", "val_fraction": val_fraction, "unit": "document",
                      "val_if": "int(sha256(document UTF-8 bytes)[:8], big-endian) / 2**64 < val_fraction"}
    files = [{"source": inp.source, "path": inp.label, "bytes": inp.path.stat().st_size,
              "sha256": downloads[inp.label]["sha256"] if inp.label in downloads else _file_sha256(inp.path)}
             for inp in inputs]
    settings = {"source": source, "tokenizer": tokenizer, "doc_sep": None if source == "pysrc" else doc_sep,
                "field": field, "max_bytes": max_bytes, "site_packages": site_packages,
                "val_fraction": val_fraction if split_rule["rule"] == "hash" else None, "version": META_VERSION}
    # Only when set, so that folders prepared before these options existed stay up to date.
    settings.update({k: v for k, v in (("tokenizer_settings", tok_settings), ("val_bytes", val_bytes)) if v})
    fingerprint = hashlib.sha256(json.dumps({"settings": settings, "files": [[f["path"], f["sha256"]] for f in files]},
                                            sort_keys=True).encode()).hexdigest()
    if not force and _up_to_date(out, fingerprint):
        if progress:
            print(f"{out} is up to date (same inputs and settings); nothing to do", file=sys.stderr)
        return out

    created_dir = not out.exists()
    with writes_to(out):
        out.mkdir(parents=True, exist_ok=True)
    tmp = {s: out / f".{s}.bin.{os.getpid()}.tmp" for s in SPLITS}
    pool = None
    try:
        n_workers = workers or (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                                else os.cpu_count() or 1)
        # A tokenizers-library tokenizer encodes a batch on its own threads, and forking after
        # those threads have run can deadlock the children (its TOKENIZERS_PARALLELISM warning).
        pool = None if is_saved_tokenizer(tokenizer) else _make_pool(n_workers)
        forced: set[bytes] = set()
        threshold = 0  # tinystories: every input has its published split
        if val_bytes is not None:
            threshold = _val_threshold(inputs, opts, val_bytes)
            split_rule.update(val_fraction=threshold / 2**64, val_bytes=val_bytes, val_threshold=threshold,
                              val_if="int(sha256(document UTF-8 bytes)[:8], big-endian) < val_threshold")
        elif split_rule["rule"] == "hash":
            threshold = int(val_fraction * 2**64)  # type: ignore[operator]  # set above for text/pysrc
        train_s = None
        while True:
            if bpe_vocab is not None:  # (re)trained whenever the train split is (re)drawn
                t0 = time.perf_counter()
                tok = train_bpe(_train_texts(inputs, opts, threshold, forced), bpe_vocab, tokenizer)
                train_s = round(time.perf_counter() - t0, 2)
            assert tok is not None
            with writes_to(out):
                ftrain, fval = open(tmp["train"], "wb"), open(tmp["val"], "wb")
            # A full disk surfaces at a write, the flush or the fsync: each names the folder (writes_to).
            with ftrain, fval:
                res = _tokenize_pass(inputs, opts, tok, threshold, forced, {"train": ftrain, "val": fval},
                                     pool, n_workers, progress)
                with writes_to(out):
                    for f in (ftrain, fval):
                        f.flush()
                        os.fsync(f.fileno())
            n_docs = res.documents["train"] + res.documents["val"]
            if split_rule["rule"] == "hash" and not res.documents["val"] and n_docs >= 2 and not forced:
                forced = {res.min_train}  # type: ignore[arg-type]  # n_docs >= 2 means train is not empty
                continue
            break
        what = ", ".join(paths) if source == "text" else source
        if n_docs < 2:
            skips = ", ".join(f"{v} {k}" for k, v in sorted(res.skipped.items())) or "nothing skipped"
            raise DataError(f"{what}: {n_docs} usable document(s) ({skips}); a train/val split needs at least 2: "
                            f"add text, check --field, or split files into documents with --doc-sep")
        for s in SPLITS:
            if not res.documents[s]:
                fix = "change --val-fraction" if split_rule["rule"] == "hash" else "check the downloaded files"
                raise DataError(f"{what}: the {s} split is empty; {fix}")
        if forced:
            split_rule["forced_val_documents"] = 1
        for f, counts in zip(files, res.per_file):
            f.update(counts)
        meta = {
            "name": name, "tokenizer": tok.name, "vocab_size": tok.vocab_size, "eot_token": tok.eot_token,
            "dtype": token_dtype(tok.vocab_size).name,
            "tokens": {s: res.tokens[s] for s in SPLITS}, "documents": {s: res.documents[s] for s in SPLITS},
            "text_bytes": {s: res.text_bytes[s] for s in SPLITS},
            "bytes_per_token": {s: bytes_per_token(res.text_bytes[s], res.tokens[s]) for s in SPLITS},
            "split": split_rule,
            "dedup": "exact: sha256 of the document's bytes; first occurrence kept, across both splits",
            "sources": _summarise(files, downloads), "skipped": dict(sorted(res.skipped.items())),
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "version": META_VERSION,
            "settings": settings, "fingerprint": fingerprint, "manifest": "manifest.jsonl",
        }
        if isinstance(tok, HFTokenizer):
            meta.update(tokenizer_file=TOKENIZER_FILE, tokenizer_sha256=tok.sha256,
                        tokenizer_source="train split" if bpe_vocab is not None else str(Path(tokenizer[3:]).resolve()),
                        tokenizer_train_s=train_s,
                        bytes_per_token_gpt2={"val": _gpt2_bytes_per_token(tmp["val"], tok, res.text_bytes["val"])})
        # Commit. meta.json goes first and comes back last: in between, the folder is not a dataset.
        (out / "meta.json").unlink(missing_ok=True)
        with writes_to(out):
            for s in SPLITS:
                os.replace(tmp[s], out / f"{s}.bin")
        if isinstance(tok, HFTokenizer):
            atomic_write_text(out / TOKENIZER_FILE, tok.text)
        else:
            (out / TOKENIZER_FILE).unlink(missing_ok=True)  # left by an earlier bpe:/hf: build
        atomic_write_text(out / "manifest.jsonl", "".join(json.dumps(f) + "\n" for f in files))
        atomic_write_text(out / "meta.json", json.dumps(meta, indent=1) + "\n")
    finally:
        if pool is not None:
            pool.terminate()
        for t in tmp.values():
            t.unlink(missing_ok=True)
        if created_dir and out.is_dir() and not any(out.iterdir()):
            out.rmdir()
    return out


def _summarise(files: list[dict[str, Any]], downloads: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """One meta.json entry per source root: file count, bytes, and a sha256 over its files' hashes."""
    out: dict[str, dict[str, Any]] = {}
    for f in files:
        entry = out.setdefault(f["source"], {"source": f["source"], "files": 0, "bytes": 0, "_h": hashlib.sha256()})
        entry["files"] += 1
        entry["bytes"] += f["bytes"]
        entry["_h"].update(f"{f['path']}\t{f['sha256']}\n".encode())
        if f["path"] in downloads:
            entry.update(file=f["path"], verified=downloads[f["path"]]["verified"])
    for entry in out.values():
        # sha256 of the lines "path<TAB>sha256\n" of this source's files in manifest.jsonl order.
        entry["sha256"] = entry.pop("_h").hexdigest()
    return list(out.values())


def _gpt2_bytes_per_token(val_path: Path, tok: Tokenizer, text_bytes: int) -> float | None:
    """GPT-2's bytes per token on the same val documents (decoded from ``val_path``), or None when
    tiktoken cannot load GPT-2 (offline): a comparison to print, never a reason to fail."""
    try:
        gpt2 = get_tokenizer("gpt2")
    except DataError:
        return None
    ids = np.fromfile(val_path, dtype=token_dtype(tok.vocab_size))
    ends = np.flatnonzero(ids == tok.eot_token)  # every document ends with one end-of-text token
    starts = np.concatenate([[0], ends[:-1] + 1])
    tokens = sum(len(gpt2.encode(tok.decode(ids[a:b].tolist()))) + 1 for a, b in zip(starts, ends))
    return bytes_per_token(text_bytes, tokens)
