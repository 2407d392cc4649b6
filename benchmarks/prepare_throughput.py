"""Throughput of ``scaling prepare`` against plain tiktoken on the same text, in the same run.

``prepare`` is timed end to end: listing and hashing the input files, reading, de-duplicating,
splitting, tokenizing in worker processes, writing train.bin/val.bin and meta.json. The
baseline is ``tiktoken.Encoding.encode_ordinary_batch(docs, num_threads=WORKERS)`` on exactly
the documents that prepare kept, already decoded in memory (so the baseline does no I/O at
all). Each is run ``--repeat`` times and the fastest run counts. The printed ratio is
prepare's bytes/s over tiktoken's bytes/s; the target is >= 0.9. The token counts of the two
are checked to agree (prepare's count includes one end-of-text token per document).

Run it here (CPU, ~8 MB of stdlib source, well under a minute):

    TIKTOKEN_CACHE_DIR=../shared/tiktoken_cache .venv/bin/python benchmarks/prepare_throughput.py

Other inputs: ``--max-bytes 0`` for the whole stdlib, ``--site-packages`` to add site-packages
(the GPU machine's ~390 MB corpus), ``--text PATH...`` for any files ``scaling prepare text``
reads (e.g. ``--text ../shared/corpus/english.txt.xz --doc-sep blank-line --max-bytes 0``),
``--tokenizer cl100k_base``, ``--workers N``.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scaling import data, sources  # noqa: E402
from scaling.prepare import prepare  # noqa: E402


def _parse_bytes(text: str) -> int:
    """``8M`` / ``500k`` / ``1e6`` -> bytes."""
    scale = {"k": 1e3, "m": 1e6, "g": 1e9}.get(text[-1:].lower(), 1)
    return int(float(text[:-1] if scale != 1 else text) * scale)


def _kept_documents(meta: dict, source: str, paths: list[str], site_packages: bool, max_bytes: int | None) -> list[str]:
    """The documents prepare tokenized, in order, as text (read the way prepare reads them)."""
    inputs = sources._cap(sources._text_inputs(paths) if source == "text" else sources._pysrc_inputs(site_packages),
                          max_bytes)
    sep = meta["settings"]["doc_sep"]
    sep = {None: None, "none": None, "blank-line": b"\n\n"}.get(sep, sep.encode() if sep else None)
    opts = sources._DocOptions(doc_sep=sep, field=meta["settings"]["field"])
    seen, docs, skipped = set(), [], Counter()
    for inp in inputs:
        for raw in sources._documents(inp, opts, skipped):
            h = hashlib.sha256(raw).digest()[:16]
            if raw.strip() and h not in seen and b"\0" not in raw:
                seen.add(h)
                try:
                    docs.append(raw.decode("utf-8"))
                except UnicodeDecodeError:
                    pass
    return docs


def main() -> None:
    """Parse flags, time both, print the ratio."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--text", nargs="+", default=None, help="prepare these files instead of the Python source tree")
    p.add_argument("--site-packages", action="store_true", help="pysrc: include site-packages")
    p.add_argument("--max-bytes", default="8M", help="input cap, e.g. 8M (0 = everything; default 8M)")
    p.add_argument("--doc-sep", default="<|endoftext|>", help="--text: document separator, blank-line, none")
    p.add_argument("--tokenizer", default="gpt2", help="a tiktoken encoding (the baseline is tiktoken itself)")
    p.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)))
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args()
    if args.tokenizer == "bytes":
        p.error("--tokenizer bytes: the baseline is tiktoken, which has no byte tokenizer; give a tiktoken encoding")
    max_bytes = _parse_bytes(args.max_bytes) or None
    source, paths = ("text", args.text) if args.text else ("pysrc", [])
    tok = data.get_tokenizer(args.tokenizer)

    with tempfile.TemporaryDirectory() as tmp:
        t_prepare = float("inf")
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            out = prepare(source, paths, tokenizer=args.tokenizer, out_dir=Path(tmp) / "ds", workers=args.workers,
                          max_bytes=max_bytes, site_packages=args.site_packages, doc_sep=args.doc_sep, force=True)
            t_prepare = min(t_prepare, time.perf_counter() - t0)
        meta = data.load_meta(out)

    docs = _kept_documents(meta, source, paths, args.site_packages, max_bytes)
    t_tiktoken, n_tokens = float("inf"), 0
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        ids = tok._enc.encode_ordinary_batch(docs, num_threads=args.workers)
        t_tiktoken = min(t_tiktoken, time.perf_counter() - t0)
        n_tokens = sum(map(len, ids))

    n_bytes = sum(meta["text_bytes"].values())
    prepared = sum(meta["tokens"].values())
    assert prepared == n_tokens + len(docs), f"token counts differ: prepare {prepared}, tiktoken {n_tokens} + eot"
    print(f"input: {source} {' '.join(paths)}  {len(docs)} documents, {n_bytes / 1e6:.1f} MB, "
          f"{n_tokens:,} {args.tokenizer} tokens, {args.workers} workers, best of {args.repeat}")
    print(f"prepare (end to end):          {t_prepare:7.2f} s  {n_bytes / t_prepare / 1e6:6.1f} MB/s  "
          f"{prepared / t_prepare / 1e6:5.2f} M tok/s")
    print(f"tiktoken encode_ordinary_batch:{t_tiktoken:7.2f} s  {n_bytes / t_tiktoken / 1e6:6.1f} MB/s  "
          f"{n_tokens / t_tiktoken / 1e6:5.2f} M tok/s")
    print(f"ratio prepare / tiktoken: {t_tiktoken / t_prepare:.2f}x  (target >= 0.9x)")


if __name__ == "__main__":
    main()
