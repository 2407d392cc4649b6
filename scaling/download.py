"""The ``tinystories`` source: resumable, verified downloads of the published TinyStories files.

``download`` fetches one URL, resuming with HTTP Range requests and retrying with backoff, and
checks its size and sha256; ``_tinystories_inputs`` fetches (or finds) the train and valid files
and hands them to ``scaling.prepare`` as inputs that keep their published split.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from scaling.errors import DataError
from scaling.sources import _file_sha256, _Input

__all__ = ["TINYSTORIES_URL", "TINYSTORIES_FILES", "download"]

# What is verified: a download is always checked against the size the server announced
# (Content-Length / Content-Range), and against "bytes" and "sha256" below when they are known.
# They are None because the published files could not be fetched from this project's machines
# to record them (third-party code quotes two different digests for the same file, so none is
# pinned here); the digest computed on first download is recorded in meta.json and manifest.jsonl.
# Pin them with --checksums FILE: {"TinyStories-train.txt": {"sha256": "...", "bytes": N}, ...}.
TINYSTORIES_URL = "https://huggingface.co/datasets/roneneldan/TinyStories/resolve/main/"
TINYSTORIES_FILES: dict[str, dict[str, Any]] = {
    "TinyStories-train.txt": {"split": "train", "bytes": None, "sha256": None},
    "TinyStories-valid.txt": {"split": "val", "bytes": None, "sha256": None},
}
_RETRY_HTTP = (408, 425, 429, 500, 502, 503, 504)


def download(url: str, dest: str | os.PathLike[str], *, sha256: str | None = None, size: int | None = None,
             retries: int = 5, backoff_s: float = 1.0, timeout_s: float = 60.0, progress: bool = True) -> str:
    """Fetch ``url`` to ``dest``, resuming a partial ``dest.part`` with HTTP Range requests.

    Retries failed or cut-off transfers ``retries`` times with exponential backoff, then checks
    the size (the server's, and ``size`` if given) and ``sha256`` if given. ``dest`` appears only
    once it is complete and verified. Returns the file's sha256.

    Raises
    ------
    DataError
        HTTP error, too many failed attempts, or a size/sha256 mismatch (the partial file is removed).
    """
    import http.client
    import urllib.error
    import urllib.request

    from tqdm import tqdm

    dest = Path(dest)
    if dest.is_file():
        return _verify_download(dest, dest, url, sha256, size)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    failures = 0
    while True:
        have = part.stat().st_size if part.exists() else 0
        expected_total = size
        request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
        try:
            with urllib.request.urlopen(request, timeout=timeout_s) as resp:
                if have and resp.status != 206:
                    have = 0  # the server ignored the Range header: start over
                content_range = resp.headers.get("Content-Range", "")
                if content_range.rpartition("/")[2].isdigit():
                    expected_total = int(content_range.rpartition("/")[2])
                elif resp.headers.get("Content-Length", "").isdigit():
                    expected_total = have + int(resp.headers["Content-Length"])
                with open(part, "ab" if have else "wb") as f, tqdm(
                        total=expected_total, initial=have, unit="B", unit_scale=True, desc=dest.name,
                        disable=not progress, file=sys.stderr) as bar:
                    while block := resp.read(1 << 20):
                        f.write(block)
                        bar.update(len(block))
            got = part.stat().st_size
            if expected_total is None or got >= expected_total:
                break
            error = f"connection closed after {got} of {expected_total} bytes"
        except urllib.error.HTTPError as e:
            if e.code == 416 and have:  # nothing left to send: the partial file is already whole
                break
            if e.code not in _RETRY_HTTP:
                raise DataError(f"{url}: HTTP {e.code} {e.reason}; check the URL "
                                f"(--url-base or SCALING_TINYSTORIES_URL)") from None
            error = f"HTTP {e.code}"
        except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
            error = f"{type(e).__name__}: {e}"
        failures += 1
        if failures > retries:
            resume = f": it resumes from {part}" if part.exists() else ""
            raise DataError(f"{url}: download failed {failures} times (last: {error}); check the network or "
                            f"--url-base and re-run{resume}")
        time.sleep(backoff_s * 2 ** (failures - 1))
    digest = _verify_download(part, dest, url, sha256, size)
    os.replace(part, dest)
    return digest


def _verify_download(path: Path, dest: Path, url: str, sha256: str | None, size: int | None) -> str:
    """Check ``path`` against the known size and sha256; remove it if wrong. Return its sha256."""
    got_size = path.stat().st_size
    digest = _file_sha256(path)
    problem = None
    if size is not None and got_size != size:
        problem = f"has {got_size} bytes, expected {size}"
    elif sha256 is not None and digest != sha256.lower():
        problem = f"has sha256 {digest}, expected {sha256.lower()}"
    if problem:
        path.unlink()
        raise DataError(f"download of {url} to {dest} {problem}: the file was corrupt and is deleted; re-run to "
                        f"fetch it again, or fix the expected checksum with --checksums")
    return digest


def _tinystories_inputs(url_base: str | None, checksums: str | os.PathLike[str] | None, download_dir: Path,
                        max_bytes: int | None, progress: bool) -> tuple[list[_Input], dict[str, dict[str, Any]]]:
    """Download (or find) the published TinyStories files; return them as inputs with their manifest."""
    base = url_base or os.environ.get("SCALING_TINYSTORIES_URL") or TINYSTORIES_URL
    files = {k: dict(v) for k, v in TINYSTORIES_FILES.items()}
    if checksums is not None:
        try:
            override = json.loads(Path(checksums).read_text())
            for fname, entry in override.items():
                files[fname].update({k: entry[k] for k in ("sha256", "bytes") if k in entry})
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            raise DataError(f"--checksums {checksums}: cannot use it ({type(e).__name__}: {e}); it must be JSON like "
                            f"{{\"TinyStories-train.txt\": {{\"sha256\": \"...\", \"bytes\": 123}}}} naming "
                            f"{' or '.join(TINYSTORIES_FILES)}") from None
    inputs, info = [], {}
    for fname, entry in files.items():
        url = base.rstrip("/") + "/" + fname
        digest = download(url, download_dir / fname, sha256=entry["sha256"], size=entry["bytes"], progress=progress)
        verified = {k: entry[k] is not None for k in ("bytes", "sha256")}
        info[fname] = {"url": url, "verified": verified, "sha256": digest}
        inputs.append(_Input(download_dir / fname, source=url, label=fname, split=entry["split"], limit=max_bytes))
    return inputs, info

