"""Input files of ``scaling prepare`` -> raw documents: finding, decompressing, splitting, hashing.

``text`` reads files, folders and globs of .txt/.md/.jsonl/.parquet (text and jsonl optionally
.gz/.xz/.zst); ``pysrc`` reads this interpreter's ``.py`` files. A file becomes documents at a
separator, one per JSON line or Parquet row (the ``field``), or whole (``_DocOptions``).
Documents stay raw bytes here; the tokenizer workers of ``scaling.prepare`` check their UTF-8.
"""

from __future__ import annotations

import glob
import hashlib
import io
import json
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterator, Sequence

from scaling.errors import DataError

__all__ = ["INPUT_SUFFIXES", "COMPRESSED_SUFFIXES"]

INPUT_SUFFIXES = (".txt", ".md", ".jsonl", ".parquet")  # what `text` picks up inside folders
COMPRESSED_SUFFIXES = (".gz", ".xz", ".zst")
_BLOCK = 16 << 20  # bytes read at a time when streaming a document-separated file


@dataclass(frozen=True)
class _Input:
    """One input file: where it is, how the manifest names it, and a fixed split if it has one."""

    path: Path
    source: str  # the root it came from (an argument, "stdlib", a URL) for the meta summary
    label: str  # its name in manifest.jsonl
    split: str | None = None  # "train"/"val" for a published split, None: split by document hash
    limit: int | None = None  # read at most this many bytes (TinyStories with --max-bytes)


@dataclass(frozen=True)
class _DocOptions:
    """How files become documents."""

    doc_sep: bytes | None  # None: a whole file is one document, kept byte for byte
    field: str  # JSON field / Parquet column holding the text


def _kind(path: Path) -> tuple[str, str, str]:
    """(name without compression suffix, format, compression): format is text, jsonl or parquet;
    compression is '', gz, xz or zst. A compressed .parquet is not a format we read (text)."""
    name = path.name.lower()
    comp = next((c for c in COMPRESSED_SUFFIXES if name.endswith(c)), "")
    base = name[: len(name) - len(comp)]
    fmt = "jsonl" if base.endswith(".jsonl") else "parquet" if base.endswith(".parquet") and not comp else "text"
    return base, fmt, comp.lstrip(".")


def _wanted(path: Path, suffixes: Sequence[str]) -> bool:
    """Whether a file found inside a folder is one of the formats we read."""
    base, fmt, comp = _kind(path)
    return base.endswith(tuple(suffixes)) and not (comp and base.endswith(".parquet"))


def _walk(root: Path, suffixes: Sequence[str], exclude: Sequence[str] = ()) -> list[Path]:
    """Files under ``root`` with a wanted suffix, sorted; skips caches and ``exclude`` folder names."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in exclude and d != "__pycache__" and not d.startswith("."))
        out.extend(Path(dirpath) / f for f in sorted(filenames) if _wanted(Path(f), suffixes))
    # is_file() follows symlinks, so a dangling link is dropped here instead of failing later.
    return [p for p in out if p.is_file()]


def _text_inputs(paths: Sequence[str]) -> list[_Input]:
    """Expand files, folders and globs into inputs (each real file once, first mention wins)."""
    if not paths:
        raise DataError("scaling prepare text needs at least one PATH (a file, folder or glob)")
    found: list[_Input] = []
    seen: set[Path] = set()
    for arg in paths:
        matches = [Path(m) for m in sorted(glob.glob(arg, recursive=True))] if glob.has_magic(arg) else [Path(arg)]
        if not matches or not matches[0].exists():
            raise DataError(f"input {arg!r} does not exist (or the glob matched nothing); check the path")
        for m in matches:
            files = _walk(m, INPUT_SUFFIXES) if m.is_dir() else [m]
            for f in files:
                real = f.resolve()
                if real not in seen and f.is_file():
                    seen.add(real)
                    found.append(_Input(real, source=arg, label=str(real)))
    return found


def _pysrc_inputs(site_packages: bool) -> list[_Input]:
    """The running interpreter's ``.py`` files: the stdlib, and site-packages if asked."""
    import sysconfig

    paths = sysconfig.get_paths()
    roots = [("stdlib", Path(paths["stdlib"]))]
    if site_packages:
        roots += [("site-packages", Path(p)) for p in dict.fromkeys((paths["purelib"], paths["platlib"]))]
    inputs = []
    for label, root in roots:
        # Outside a venv, site-packages lives inside the stdlib folder: never count it twice.
        for f in _walk(root, (".py",), exclude=("site-packages", "dist-packages")):
            inputs.append(_Input(f, source=f"{label}:{root}", label=f"{label}/{f.relative_to(root)}"))
    return inputs


def _cap(inputs: list[_Input], max_bytes: int | None) -> list[_Input]:
    """Whole files in order until the next would pass ``max_bytes`` on disk (at least one)."""
    if max_bytes is None:
        return inputs
    out, total = [], 0
    for inp in inputs:
        size = inp.path.stat().st_size
        if out and total + size > max_bytes:
            break
        out.append(inp)
        total += size
    return out


def _open(path: Path) -> BinaryIO:
    """``path`` opened for binary reading, decompressed by its suffix."""
    comp = _kind(path)[2]
    if comp == "gz":
        import gzip

        return gzip.open(path, "rb")  # type: ignore[return-value]
    if comp == "xz":
        import lzma

        return lzma.open(path, "rb")  # type: ignore[return-value]
    if comp == "zst":
        import zstandard

        # BufferedReader adds the readline/iteration that the zstd stream lacks.
        raw = open(path, "rb")
        reader = zstandard.ZstdDecompressor().stream_reader(raw, closefd=True)
        return io.BufferedReader(reader)  # type: ignore[arg-type]
    return open(path, "rb")


def _split_stream(stream: BinaryIO, sep: bytes, limit: int | None, block_size: int = _BLOCK) -> Iterator[bytes]:
    """Documents of a stream separated by ``sep``, read in blocks so a huge file streams.

    With ``limit``, at most that many bytes are read and a document cut by the limit is dropped.
    """
    keep = len(sep) - 1  # a separator may straddle two blocks: hold back its possible prefix
    pending: list[bytes] = []
    carry, taken = b"", 0
    while True:
        block = stream.read(block_size if limit is None else min(block_size, limit - taken))
        if not block:
            break
        taken += len(block)
        parts = (carry + block).split(sep)
        for part in parts[:-1]:
            pending.append(part)
            yield b"".join(pending)
            pending = []
        last = parts[-1]
        cut = max(len(last) - keep, 0)
        pending.append(last[:cut])
        carry = last[cut:]
    truncated = limit is not None and taken >= limit and stream.read(1) != b""
    if not truncated:
        yield b"".join(pending) + carry


def _records(inp: _Input, stream: BinaryIO | None, field: str, skipped: Counter) -> Iterator[bytes]:
    """Documents of a .jsonl (one JSON object per line) or .parquet file: the ``field`` strings."""
    fix = "pass --field with the name that holds the text"
    n_ok = 0
    if stream is None:  # parquet
        import pyarrow.parquet as pq

        pf = pq.ParquetFile(inp.path)
        if field not in pf.schema_arrow.names:
            raise DataError(f"{inp.path}: no column {field!r} (columns: {', '.join(pf.schema_arrow.names)}); {fix}")
        for batch in pf.iter_batches(columns=[field], batch_size=8192):
            for value in batch.column(0).to_pylist():
                if isinstance(value, str):
                    n_ok += 1
                    yield value.encode("utf-8", errors="surrogatepass")
                else:
                    skipped["bad_records"] += 1
        return
    keys: list[str] = []
    for line in stream:
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except ValueError:  # bad JSON or bad UTF-8
            skipped["bad_records"] += 1
            continue
        if isinstance(rec, dict) and isinstance(rec.get(field), str):
            n_ok += 1
            yield rec[field].encode("utf-8", errors="surrogatepass")
        else:
            skipped["bad_records"] += 1
            keys = keys or (list(rec) if isinstance(rec, dict) else [])
    if keys and not n_ok:
        raise DataError(f"{inp.path}: no record has a string field {field!r} (keys: {', '.join(keys[:10])}); {fix}")


def _documents(inp: _Input, opts: _DocOptions, skipped: Counter) -> Iterator[bytes]:
    """Raw UTF-8 bytes of each document of one input; UTF-8 validity is checked by the tokenizer."""
    _, fmt, comp = _kind(inp.path)
    try:
        if fmt == "parquet":
            yield from _records(inp, None, opts.field, skipped)
            return
        with _open(inp.path) as stream:
            if fmt == "jsonl":
                yield from _records(inp, stream, opts.field, skipped)
            elif opts.doc_sep is None:
                yield stream.read() if inp.limit is None else stream.read(inp.limit)
            else:
                # Separator-split documents lose the whitespace around the separator line.
                yield from (d.strip() for d in _split_stream(stream, opts.doc_sep, inp.limit))
    except DataError:
        raise
    except Exception as e:  # OSError, EOFError, lzma/zlib/zstd/arrow errors: the file cannot be read
        raise DataError(f"{inp.path}: cannot be read as {fmt}{f' ({comp})' if comp else ''} ({type(e).__name__}: {e}); "
                        f"fix or remove the file from the inputs") from None


def _file_sha256(path: Path) -> str:
    """sha256 of a file's bytes on disk."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(_BLOCK):
            h.update(block)
    return h.hexdigest()
