"""Installing from a URL or a Hugging Face repo id: fetched into the root's cache, then
installed like a local path. Offline, the user gets one clear sentence."""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from loraworks.models.errors import ModelError
from loraworks.models.progress import CHUNK_BYTES, ByteCounter, ProgressCallback

_REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]{0,95}/[\w.-]{1,96}")
_DOWNLOAD_PATTERNS = ["*.safetensors", "*.json", "*.txt", "*.png"]


def is_remote(source: str) -> bool:
    return source.startswith(("http://", "https://")) or bool(_REPO_ID.fullmatch(source))


@contextmanager
def fetch_remote(
    source: str, cache: Path, progress: ProgressCallback | None = None
) -> Iterator[Path]:
    """Yield a local copy of `source`, deleted afterwards (the install copies it)."""
    cache.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="download-", dir=cache))
    try:
        if source.startswith(("http://", "https://")):
            yield _download_url(source, tmp, progress)
        else:
            yield _download_repo(source, tmp, progress)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _download_url(url: str, folder: Path, progress: ProgressCallback | None) -> Path:
    import httpx

    name = url.split("?")[0].rstrip("/").split("/")[-1] or "download.safetensors"
    target = folder / re.sub(r"[^\w.+-]", "-", name)
    try:
        with httpx.stream("GET", url, follow_redirects=True, timeout=30) as response:
            response.raise_for_status()
            length = response.headers.get("content-length")
            counter = ByteCounter(progress, "download", int(length) if length else None)
            with target.open("wb") as f:
                # as the bytes arrive (at most a chunk at a time), so that the install's guard
                # (models/guard.py) also sees a server that trickles
                for chunk in _pieces(response.iter_bytes()):
                    f.write(chunk)
                    # bytes on the wire, which the length counts (the chunks may be unzipped)
                    counter.add(response.num_bytes_downloaded - counter.done, target.name)
    except httpx.HTTPError as exc:
        raise ModelError(f"cannot download {url}: {exc} (is there a network?)") from None
    return target


def _pieces(chunks: Iterator[bytes]) -> Iterator[bytes]:
    """Each received chunk, cut to at most `CHUNK_BYTES`."""
    for chunk in chunks:
        for start in range(0, len(chunk), CHUNK_BYTES):
            yield chunk[start : start + CHUNK_BYTES]


def _download_repo(repo_id: str, folder: Path, progress: ProgressCallback | None) -> Path:
    """A repo is reported when it starts and when it is complete (huggingface_hub draws its
    own bars meanwhile)."""
    hint = f"'{repo_id}' is not a local path"
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        raise ModelError(f"{hint}, and Hugging Face downloads are off (HF_HUB_OFFLINE=1)")
    ByteCounter(progress, "download", None).add(0, repo_id)
    try:
        from huggingface_hub import snapshot_download

        snapshot_download(repo_id, local_dir=folder, allow_patterns=_DOWNLOAD_PATTERNS)
    except Exception as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(
            f"{hint}, and it cannot be fetched from Hugging Face: {reason} (is there a network?)"
        ) from None
    size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    ByteCounter(progress, "download", size).add(size, repo_id)
    return folder
