"""Downloading model files: https/http, file:// and hf://<repo_id>/<file>, with SHA-256 check and an atomic move.

A partial download never sits where a complete file is expected: data goes to a temporary file beside the
target and is renamed once the checksum agrees.
"""
import hashlib
import logging
import os
import tempfile
import urllib.request
from pathlib import Path
from typing import Optional
from urllib.error import URLError

from .errors import HLIPError

log = logging.getLogger("HLIPCore.download")
CHUNK = 1 << 20


def sha256_of(path, chunk: int = CHUNK) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def _open(url: str):
    if url.startswith("hf://"):
        repo_id, _, filename = url[len("hf://"):].rpartition("/")
        try:
            from huggingface_hub import hf_hub_download
        except ImportError:
            raise HLIPError(f"{url}: downloading from the Hugging Face hub needs the huggingface_hub package") from None
        return open(hf_hub_download(repo_id, filename), "rb"), None
    request = urllib.request.Request(url, headers={"User-Agent": "hlip-slicer"})
    response = urllib.request.urlopen(request, timeout=60)
    if "text/html" in (response.headers.get("Content-Type") or ""):
        raise HLIPError(f"{url}: the server sent a web page instead of the model file; download it in a browser "
                        "and give its path with --model PATH (or add it to the catalog with 'path')")
    length = response.headers.get("Content-Length")
    return response, int(length) if length else None


def download_file(url: str, dest, sha256: Optional[str] = None, progress: bool = True) -> Path:
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            try:
                source, total = _open(url)
            except (URLError, OSError, ValueError) as exc:
                raise HLIPError(f"{url}: download failed ({getattr(exc, 'reason', exc)}); check the network or "
                                f"place the file by hand at {dest}") from None
            with source:
                bar = None
                if progress:
                    from tqdm import tqdm
                    bar = tqdm(total=total, unit="B", unit_scale=True, desc=dest.name, leave=False)
                for block in iter(lambda: source.read(CHUNK), b""):
                    out.write(block)
                    if bar:
                        bar.update(len(block))
                if bar:
                    bar.close()
        got = sha256_of(tmp)
        if sha256 and got.lower() != sha256.lower():
            raise HLIPError(f"{url}: checksum mismatch (expected sha256 {sha256[:12]}..., got {got[:12]}...); "
                            "the file was not kept")
        os.replace(tmp, dest)
        log.info("downloaded %s (sha256 %s)", dest, got)
        return dest
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
