"""Cluster-side object transfers: jobs pull inputs from and push outputs to the customer's S3 bucket or Azure
Blob container, through the clouds' own SDKs (s3store.py: boto3/s3transfer; blobstore.py: azure-storage-blob).

Usage:  bucketio.py get URL DEST_DIR
        bucketio.py put SRC_DIR URL [--skip MANIFEST]

URL: s3://bucket/key, az://account/container/path (mpicloud.protocol.objects); a key ending in '/' is a prefix.
MANIFEST (written by the runner after staging inputs) maps relative paths to [size, mtime_ns]: files still
matching it are inputs and are not uploaded. MPICLOUD_OBJECT_LIBS names a directory holding the SDKs when the
interpreter does not have them (Windows' embedded Python). This module imports only the standard library; the
SDKs load with the store a URL needs.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Protocol, TypeVar

# an isolated interpreter leaves the script's directory off sys.path: find the modules beside it
sys.path.insert(0, str(Path(__file__).resolve().parent))
from mpicloud.protocol.objects import BadObjectURL, ObjectURL, StoreError, parse, use_object_libs
from mpicloud.protocol.paths import UnsafePath, safe_join

#: files moved at once (each large one is itself split into parallel parts by its SDK)
WORKERS = 8
T = TypeVar("T")


class Store(Protocol):
    """One bucket or container, as the transfers below use it."""

    def list(self, prefix: str) -> list[tuple[str, int]]:
        """(key, size) of every object under prefix."""

    def size(self, key: str) -> int:
        """One object's size (StoreError when it is missing or unreadable)."""

    def download(self, key: str, dest: Path) -> None:
        """Write the object's bytes to dest (a fresh file)."""

    def upload(self, path: Path, key: str) -> None:
        """Store the file's bytes as key."""


def open_store(url: ObjectURL) -> Store:
    """The store a URL lives in, with this node's credentials."""
    use_object_libs()
    if url.scheme == "s3":
        import s3store
        return s3store.S3Store(url.store)
    import blobstore
    return blobstore.BlobStore(url.account, url.store)


def at(url: ObjectURL, key: str) -> ObjectURL:
    """Another key in the same bucket or container."""
    return ObjectURL(url.scheme, url.account, url.store, key)


def local_path(folder: Path, key: str, relative: str) -> Path:
    """folder/relative by the one path rule, or StoreError naming the key."""
    try:
        return safe_join(folder, relative)
    except UnsafePath as exc:
        raise StoreError(f"refusing object key {key!r}: {exc}") from None


def fetch(store: Store, url: ObjectURL, key: str, dest: Path, size: int) -> None:
    """One object into dest through dest.part: renamed into place only when all `size` bytes arrived."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    part.unlink(missing_ok=True)
    try:
        store.download(key, part)
        got = part.stat().st_size
        if got != size:
            raise StoreError(f"get {at(url, key)}: {got} of {size} bytes arrived")
        os.replace(part, dest)
    finally:
        part.unlink(missing_ok=True)


def each(items: Iterable[T], work: Callable[[T], None]) -> list[str]:
    """Run work on every item, WORKERS at a time; the failures' messages in item order."""
    def attempt(item: T) -> str | None:
        try:
            work(item)
        except (StoreError, OSError) as exc:
            return str(exc)
        return None
    with ThreadPoolExecutor(WORKERS) as pool:
        return [problem for problem in pool.map(attempt, items) if problem]


def get(text: str, dest_dir: Path) -> None:
    """An object into dest_dir/<name>, or every object under a prefix into dest_dir/<name>/.

    Every local name comes from the key through the one path rule (mpicloud.protocol.paths), checked for all
    keys before anything is written: a key that would land outside dest_dir refuses the whole get."""
    url = parse(text)
    store = open_store(url)
    if not url.is_prefix:
        target = local_path(dest_dir, url.key, url.name)
        size = store.size(url.key)
        fetch(store, url, url.key, target, size)
        print(f"got {url} ({size} bytes)", flush=True)
        return
    folder = local_path(dest_dir, url.key or url.store, url.name)
    wanted = [(key, key[len(url.key):], size) for key, size in store.list(url.key)]
    wanted = [(key, relative, size) for key, relative, size in wanted if relative and not relative.endswith("/")]
    targets = {key: local_path(folder, key, relative) for key, relative, _ in wanted}  # refuse before writing
    problems = each(wanted, lambda item: fetch(store, url, item[0], targets[item[0]], item[2]))
    if problems:
        raise StoreError(f"{len(problems)} of {len(wanted)} object(s) under {url} failed; first: {problems[0]}")
    print(f"got {len(wanted)} object(s) under {url}", flush=True)


def changed_files(src: Path, skip: dict[str, list[int]] | None) -> list[tuple[Path, str]]:
    """(path, relative name) of every regular file under src not listed unchanged in skip."""
    out = []
    for path in sorted(p for p in src.rglob("*") if p.is_file() and not p.is_symlink()):
        relative, st = path.relative_to(src).as_posix(), path.stat()
        if not (skip and skip.get(relative) == [st.st_size, st.st_mtime_ns]):
            out.append((path, relative))
    return out


def put(src: Path, text: str, skip: dict[str, list[int]] | None = None) -> int:
    """Upload every file under src below the URL's prefix, except unchanged ones listed in skip."""
    url = parse(text)
    prefix = url.key if url.is_prefix else url.key + "/"
    store = open_store(url)
    files = changed_files(src, skip)

    def one(item: tuple[Path, str]) -> None:
        store.upload(item[0], prefix + item[1])
        print(f"put {at(url, prefix + item[1])} ({item[0].stat().st_size} bytes)", flush=True)
    problems = each(files, one)
    if problems:
        raise StoreError(f"{len(problems)} of {len(files)} file(s) not uploaded; first: {problems[0]}")
    return len(files)


def main(argv: list[str]) -> int:
    """CLI for the runner and for run scripts."""
    try:
        if len(argv) == 3 and argv[0] == "get":
            get(argv[1], Path(argv[2]))
            return 0
        if len(argv) in (3, 5) and argv[0] == "put":
            skip = json.loads(Path(argv[4]).read_text()) if len(argv) == 5 and argv[3] == "--skip" else None
            print(f"{put(Path(argv[1]), argv[2], skip)} file(s) uploaded to {argv[2]}", flush=True)
            return 0
    except (StoreError, BadObjectURL, OSError, ValueError) as exc:
        print(f"bucketio: {exc}", file=sys.stderr, flush=True)
        return 1
    except ImportError as exc:
        print(f"bucketio: this node lacks the storage SDK ({exc.name}); see docs/bucket-access.md",
              file=sys.stderr, flush=True)
        return 1
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
