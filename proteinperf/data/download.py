"""UniProt release downloads: HTTP Range resume into *.part, progress, verification, rename."""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request
from pathlib import Path

from .fasta import DataError, open_binary

UNIPROT = "https://ftp.uniprot.org/pub/databases/uniprot"
URLS = {
    "uniref50": f"{UNIPROT}/uniref/uniref50/uniref50.fasta.gz",
    "uniref90": f"{UNIPROT}/uniref/uniref90/uniref90.fasta.gz",
    "swissprot": f"{UNIPROT}/current_release/knowledgebase/complete/uniprot_sprot.fasta.gz",
    "trembl": f"{UNIPROT}/current_release/knowledgebase/complete/uniprot_trembl.fasta.gz",
}
CHUNK = 1 << 20


def download_dataset(name: str, root: str | Path, progress: bool = True) -> Path:
    if name not in URLS:
        raise DataError(f"unknown dataset {name!r}; choose from {', '.join(URLS)}")
    url = URLS[name]
    return download(url, Path(root) / url.rsplit("/", 1)[1], progress=progress)


def download(url: str, dest: str | Path, progress: bool = True, timeout: float = 60) -> Path:
    """Fetch url to dest, resuming a previous dest.part; verified before the atomic rename."""
    from tqdm import tqdm

    dest = Path(dest)
    if dest.is_file():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and have:  # the part file is already complete
            return _finish(part, dest, have)
        raise DataError(f"{url}: HTTP {e.code} {e.reason}") from None
    except (urllib.error.URLError, OSError) as e:
        raise DataError(f"{url}: {getattr(e, 'reason', e)}") from None
    with response:
        length = response.headers.get("Content-Length")
        if response.status != 206:
            have = 0  # the server ignored the Range: start again
        total = have + int(length) if length is not None else None
        bar = tqdm(
            total=total,
            initial=have,
            unit="B",
            unit_scale=True,
            disable=not progress,
            file=sys.stderr,
            desc=dest.name,
        )
        try:
            with open(part, "ab" if have else "wb") as f:
                while chunk := response.read(CHUNK):
                    f.write(chunk)
                    bar.update(len(chunk))
        except OSError as e:
            raise DataError(f"{url}: download interrupted ({e}); run again to resume") from None
        finally:
            bar.close()
    return _finish(part, dest, total)


def _finish(part: Path, dest: Path, total: int | None) -> Path:
    size = part.stat().st_size
    if total is not None and size != total:
        raise DataError(f"{part}: {size} bytes, expected {total}; run again to resume")
    if dest.suffix == ".gz":
        check_gzip(part)
    os.replace(part, dest)
    return dest


def check_gzip(path: Path) -> None:
    """Decompress the whole file once: catches truncation and corruption (CRC, length)."""
    try:
        with open_binary(path) as f:
            while f.read(16 * CHUNK):
                pass
    except (OSError, EOFError) as e:
        os.remove(path)
        raise DataError(f"{path}: corrupt gzip download ({e}); removed, run again") from None
