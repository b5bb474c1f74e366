"""The project's one keyed cache: computed results (seeds, reconstructions, scores) and model folders.

Every cached thing is addressed by :func:`content_key`, the SHA-256 of a canonical JSON of everything
that determines it. Results (tensors and metadata) live in a :class:`Store`; whole folders (a trained
world, an erased model in the diffusers layout) live under :func:`keyed_folder` and are written with
:func:`write_folder_atomically` under :func:`locked`.

An entry is addressed by a key: the SHA-256 of a canonical JSON of everything that determines the
result (model weights hash, image hash, method, parameters). It is kept as two files,
``<root>/<key[:2]>/<key>.safetensors`` (the tensors) and ``<key>.json`` (the metadata, the parts
that made the key, and the size and SHA-256 of the tensor file). Both are written atomically
(temporary file in the same folder, fsync, ``os.replace``), the tensor file first: an entry exists
only once complete, and a crash leaves at most an orphan tensor file that is ignored and later
overwritten. ``get`` checks the checksum, so a truncated or altered entry raises
``StoreCorruptError`` instead of returning garbage.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import fcntl
import hashlib
import json
import math
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path, PurePath
from typing import Any, Callable, Iterator, Sequence, TypeVar

import numpy as np
import safetensors.torch
import torch

from . import distributed
from .paths import cache_dir, note_cache_write
from .progress import tqdm

FORMAT_VERSION = 1  # part of every key: bump it when the layout or the meaning of entries changes

T = TypeVar("T")
Tensors = dict[str, torch.Tensor]
Meta = dict[str, Any]


class StoreCorruptError(RuntimeError):
    """A stored entry that exists but cannot be trusted (truncated, altered or unreadable)."""

    def __init__(self, key: str, path: Path, reason: str, root: Path):
        self.key, self.path, self.reason = key, path, reason
        super().__init__(
            f"results store entry {key} is corrupt ({path}: {reason}); "
            f"remove it with Store({str(root)!r}).discard({key!r}) and recompute"
        )


@dataclass
class Entry:
    """One stored result: its tensors (on the CPU), its metadata and the parts of its key."""

    key: str
    tensors: Tensors
    meta: Meta
    parts: dict[str, Any] | None = field(default=None)


# --------------------------------------------------------------------------- hashing


def hash_tensor(t: torch.Tensor | np.ndarray) -> str:
    """Short content hash (16 hex digits of SHA-256) of a tensor's dtype, shape and values."""
    if isinstance(t, np.ndarray):
        t = torch.from_numpy(np.ascontiguousarray(t))
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"hash_tensor expects a tensor or an ndarray, got {type(t).__name__}")
    t = t.detach().to("cpu").contiguous()
    digest = hashlib.sha256(f"{t.dtype}:{tuple(t.shape)}:".encode())
    if t.numel():
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def hash_image(image: torch.Tensor | np.ndarray | str | Path) -> str:
    """Content hash of an image: of its values for a tensor or array, of the file's bytes for a path."""
    if isinstance(image, (str, PurePath)):
        path = Path(image)
        if not path.is_file():
            raise FileNotFoundError(f"image file not found: {path}")
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        return digest.hexdigest()[:16]
    return hash_tensor(image)


def _canonical(value: Any, where: str) -> Any:
    """``value`` as plain JSON data; a type without an unambiguous text form raises TypeError."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, enum.Enum):
        return _canonical(value.value, where)
    if isinstance(value, (int, float)):
        if isinstance(value, float) and not math.isfinite(value):
            return {"__float__": repr(value)}
        return value
    if isinstance(value, (torch.Tensor, np.ndarray)):
        raise TypeError(f"key part {where} is a {type(value).__name__}: pass its hash (store.hash_tensor) instead")
    if isinstance(value, np.generic):
        return _canonical(value.item(), where)
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, torch.dtype):
        return str(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
        return {"__class__": type(value).__name__, **_canonical(fields, where)}
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise TypeError(f"key part {where} has a non-string dict key {k!r}")
            out[k] = _canonical(v, f"{where}.{k}")
        return out
    if isinstance(value, (list, tuple)):
        return [_canonical(v, f"{where}[{i}]") for i, v in enumerate(value)]
    raise TypeError(f"key part {where} has the unsupported type {type(value).__name__}")


def canonical_json(parts: dict[str, Any]) -> str:
    """The canonical text of key parts: sorted keys, no whitespace, Paths as strings, the format version."""
    data = {"__store_format__": FORMAT_VERSION, **{k: _canonical(v, k) for k, v in parts.items()}}
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


def content_key(**parts: Any) -> str:
    """SHA-256 (64 hex digits) of the canonical JSON of ``parts``: the key of every cached thing.

    Parts are JSON-like values (str, int, float, bool, None, lists, dicts with str keys), Paths
    (as strings), enums and dataclasses (as their fields). Tensors and arrays are refused with a
    TypeError: pass ``hash_tensor(t)`` instead. ``1`` and ``1.0`` give different keys.
    """
    if not parts:
        raise ValueError("content_key needs at least one part")
    return hashlib.sha256(canonical_json(parts).encode()).hexdigest()


# --------------------------------------------------------------------------- folders


def _slug(label: str) -> str:
    return re.sub(r"[^a-z0-9+.-]+", "_", label.lower()).strip("_")[:60] or "item"


def keyed_folder(namespace: str, label: str, parts: dict[str, Any], root: str | Path | None = None) -> Path:
    """Where a cached folder lives: ``<root>/<namespace>/<label>-<first 16 digits of its key>``.

    ``root`` defaults to :func:`~memories_lib.core.paths.cache_dir`; ``label`` is for people
    (e.g. ``esd-x-triangle``); the key, made of ``parts``, is what tells folders apart.
    """
    base = Path(root) if root is not None else cache_dir()
    return base / namespace / f"{_slug(label)}-{content_key(**parts)[:16]}"


@contextlib.contextmanager
def _locked_file(lock_file: Path, wait: bool = True) -> Iterator[bool]:
    """An exclusive ``flock`` on ``lock_file`` (created if needed), held for the ``with`` block.

    Yields True once held; with ``wait=False`` it yields False at once (holding nothing) when
    another process holds it.
    """
    with open(lock_file, "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextlib.contextmanager
def locked(folder: str | Path) -> Iterator[None]:
    """An exclusive lock on ``folder`` (created if needed), so two processes never build it at once."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with _locked_file(folder / ".lock"):
        yield


@contextlib.contextmanager
def locked_beside(target: str | Path) -> Iterator[None]:
    """An exclusive lock on ``target`` that does not create it: the file ``.<name>.lock`` beside it.

    For a folder written whole by :func:`write_folder_atomically`, whose existence means it is
    complete: two processes never build it at once, and it does not appear before it is written.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    with _locked_file(target.parent / f".{target.name}.lock"):
        yield


def write_folder_atomically(target: str | Path, write: Callable[[Path], None]) -> Path:
    """Run ``write(tmp)`` into a fresh temporary folder beside ``target``, then move it to ``target``.

    Readers see the old folder, then (for the moment between removing it and the move) none, then the
    complete new one; never a half-written one. A failed ``write`` leaves the old folder as it was and
    nothing else behind.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp_parent = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        tmp = tmp_parent / target.name
        write(tmp)
        if not tmp.is_dir():
            raise FileNotFoundError(f"writing {target} produced no folder")
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp_parent, ignore_errors=True)
    note_cache_write(target)
    return target


# --------------------------------------------------------------------------- files


def _fsync_dir(path: Path) -> None:
    """Make a rename in ``path`` durable (best effort: not every platform allows it)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see either the old file or the complete new one."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


# --------------------------------------------------------------------------- the store


class Store:
    """A folder of results addressed by content keys (see the module docstring)."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def __repr__(self) -> str:
        return f"Store({str(self.root)!r})"

    key = staticmethod(content_key)

    def paths(self, key: str) -> tuple[Path, Path]:
        """(tensor file, metadata file) of an entry."""
        if not (isinstance(key, str) and len(key) == 64 and all(c in "0123456789abcdef" for c in key)):
            raise ValueError(f"not a store key (64 lowercase hex digits): {key!r}")
        folder = self.root / key[:2]
        return folder / f"{key}.safetensors", folder / f"{key}.json"

    def __contains__(self, key: str) -> bool:
        return self.paths(key)[1].is_file()

    def put(
        self, key: str, tensors: Tensors, meta: Meta | None = None, parts: dict[str, Any] | None = None
    ) -> Entry:
        """Store ``tensors`` (name -> tensor) and JSON-serialisable ``meta`` under ``key``, atomically.

        ``parts`` (optional) are recorded beside the metadata for provenance. Returns the entry as
        ``get`` will return it (CPU tensors; the metadata after a JSON round trip).
        """
        data_path, meta_path = self.paths(key)
        if not isinstance(tensors, dict):
            raise TypeError(f"tensors must be a dict of name -> torch.Tensor, got {type(tensors).__name__}")
        clean: Tensors = {}
        for name, t in tensors.items():
            if not isinstance(name, str):
                raise TypeError(f"tensor names must be strings, got {name!r}")
            if not isinstance(t, torch.Tensor):
                raise TypeError(f"tensors[{name!r}] is a {type(t).__name__}, not a torch.Tensor")
            clean[name] = t.detach().to("cpu").contiguous().clone()
        try:
            meta = json.loads(json.dumps(dict(meta or {})))  # what get() will return: tuples become lists
        except TypeError as err:
            raise TypeError(f"meta for entry {key} is not JSON-serialisable: {err}") from err
        parts = None if parts is None else json.loads(canonical_json(parts))
        data = safetensors.torch.save(clean)
        doc = {
            "format": FORMAT_VERSION,
            "key": key,
            "meta": meta,
            "parts": parts,
            "sha256": hashlib.sha256(data).hexdigest(),
            "size": len(data),
        }
        data_path.parent.mkdir(parents=True, exist_ok=True)
        _atomic_write(data_path, data)
        _atomic_write(meta_path, json.dumps(doc, indent=1, sort_keys=True).encode())
        note_cache_write(data_path)
        return Entry(key=key, tensors=clean, meta=meta, parts=parts)

    def get(self, key: str) -> Entry | None:
        """The entry under ``key``; None if absent; StoreCorruptError if it exists but fails its checks."""
        data_path, meta_path = self.paths(key)
        try:
            text = meta_path.read_bytes()
        except FileNotFoundError:
            return None
        try:
            doc = json.loads(text)
            checksum, size, meta = doc["sha256"], doc["size"], doc["meta"]
        except (ValueError, KeyError, TypeError) as err:
            raise StoreCorruptError(key, meta_path, f"unreadable metadata ({err})", self.root) from err
        if doc.get("format") != FORMAT_VERSION:
            reason = f"format {doc.get('format')!r}, expected {FORMAT_VERSION}"
            raise StoreCorruptError(key, meta_path, reason, self.root)
        try:
            data = data_path.read_bytes()
        except FileNotFoundError:
            raise StoreCorruptError(key, data_path, "the tensor file is missing", self.root) from None
        if len(data) != size:
            reason = f"{len(data)} bytes, expected {size} (truncated?)"
            raise StoreCorruptError(key, data_path, reason, self.root)
        if hashlib.sha256(data).hexdigest() != checksum:
            raise StoreCorruptError(key, data_path, "checksum mismatch", self.root)
        try:
            tensors = safetensors.torch.load(data)
        except Exception as err:  # safetensors raises its own error types
            raise StoreCorruptError(key, data_path, f"unreadable tensors ({err})", self.root) from err
        return Entry(key=key, tensors=tensors, meta=meta, parts=doc.get("parts"))

    def discard(self, key: str) -> bool:
        """Remove an entry (both files); True if anything was removed."""
        removed = False
        for path in reversed(self.paths(key)):  # metadata first: the entry stops existing at once
            try:
                path.unlink()
                removed = True
            except FileNotFoundError:
                pass
        return removed

    @contextlib.contextmanager
    def computing(self, keys: Sequence[str], wait: bool = True) -> Iterator[bool]:
        """Exclusive locks on ``keys`` (a hidden ``.<key>.lock`` beside each entry), for computing them.

        Two processes that ask for the same missing entry (two chapters side by side) must not both
        compute it: the second waits here until the first has stored it, then finds it with
        ``get``. The locks are taken in sorted order, so two processes with overlapping batches
        cannot wait on each other. Yields True once every lock is held; with ``wait=False`` it
        yields False instead of waiting when another process holds one of them (holding none).
        """
        with contextlib.ExitStack() as stack:
            for key in sorted(set(keys)):
                data_path, _ = self.paths(key)
                data_path.parent.mkdir(parents=True, exist_ok=True)
                if not stack.enter_context(_locked_file(data_path.parent / f".{key}.lock", wait)):
                    stack.close()  # release the ones already held before saying so
                    yield False
                    return
            yield True

    def get_or_compute(self, parts: dict[str, Any], compute: Callable[[], tuple[Tensors, Meta]]) -> Entry:
        """The entry for ``parts``; if absent, ``compute() -> (tensors, meta)`` makes it and it is stored.

        The computation runs under :meth:`computing`: a process that asks for the same entry
        meanwhile waits for it instead of computing it again.
        """
        key = self.key(**parts)
        entry = self.get(key)
        if entry is not None:
            return entry
        with self.computing([key]):
            entry = self.get(key)  # stored meanwhile by another process?
            if entry is not None:
                return entry
            tensors, meta = compute()
            return self.put(key, tensors, meta, parts=parts)

    def map_items(
        self,
        items: Sequence[T],
        key_fn: Callable[[T], str | dict[str, Any]],
        compute_batch: Callable[[list[T]], Sequence[tuple[Tensors, Meta]]],
        batch_size: int = 8,
        desc: str = "items",
        recompute_corrupt: bool = False,
        progress: bool = True,
    ) -> list[Entry]:
        """Results for ``items`` in input order, computing only those not yet stored.

        ``key_fn(item)`` gives a key or a dict of key parts. Missing items go in batches of
        ``batch_size`` to ``compute_batch(batch) -> [(tensors, meta), ...]`` (one pair per item, in
        order); each batch is stored as soon as it is done, so an interrupted run resumes where it
        stopped. Items with the same key are computed once. A corrupt entry raises
        StoreCorruptError unless ``recompute_corrupt`` is set. ``progress``: show the bar.

        Other processes may ask for the same items at the same time: chapters side by side, or the
        processes of a launched job (``core.distributed``), which all run this loop. A batch is
        computed under :meth:`computing`; a batch another process holds is passed over and read
        once that process has stored it, so each result is computed once and every caller gets all
        of them. In a launched job each process starts with its own share of the batches
        (:func:`~memories_lib.core.distributed.own_first`), and the batches are cut from all the
        items rather than from the missing ones, so that every process cuts them alike whatever it
        found stored when it looked (a batch's results can depend on its other images in the last
        bits); a loop of fewer than one batch per process is cut smaller, so that each has one. On
        an empty store, or one holding whole batches of an earlier run, a loop of at least one
        batch per process is cut as a single process with the same ``batch_size`` cuts it.
        """
        if int(batch_size) != batch_size or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        items = list(items)
        keys: list[str] = []
        parts_of: dict[str, dict[str, Any] | None] = {}
        for item in items:
            k = key_fn(item)
            if isinstance(k, dict):
                parts, k = k, self.key(**k)
            else:
                parts = None
                self.paths(k)  # validates the key
            keys.append(k)
            parts_of.setdefault(k, parts)

        first: dict[str, int] = {}
        for i, k in enumerate(keys):
            first.setdefault(k, i)
        results: dict[str, Entry] = {}
        todo: list[int] = []  # index of the first item of each key that must be computed
        for k, i in first.items():
            try:
                entry = self.get(k)
            except StoreCorruptError:
                if not recompute_corrupt:
                    raise
                self.discard(k)
                entry = None
            if entry is None:
                todo.append(i)
            else:
                results[k] = entry

        job = distributed.launch()
        cut = todo if job.count == 1 else list(first.values())
        size = int(batch_size)
        if job.count > 1:  # at least one batch for every process of the job
            size = max(1, min(size, math.ceil(len(cut) / job.count)))
        batches = [batch for batch in (cut[s : s + size] for s in range(0, len(cut), size))
                   if any(keys[i] not in results for i in batch)]

        def settle(batch: list[int], wait: bool) -> bool:
            """Read or compute ``batch`` under its locks; False (nothing done) if another process holds one."""
            with self.computing([keys[i] for i in batch], wait=wait) as held:
                if not held:
                    return False
                # Another process may have stored some meanwhile.
                stored = {i: results.get(keys[i]) or self.get(keys[i]) for i in batch}
                for i, entry in stored.items():
                    if entry is not None:
                        results[keys[i]] = entry
                left = [i for i in batch if stored[i] is None]
                outputs = list(compute_batch([items[i] for i in left])) if left else []
                if len(outputs) != len(left):
                    raise ValueError(f"compute_batch returned {len(outputs)} results for a batch of "
                                     f"{len(left)} items")
                for i, (tensors, meta) in zip(left, outputs):
                    results[keys[i]] = self.put(keys[i], tensors, meta, parts=parts_of[keys[i]])
                return True

        missing = set(todo)
        with tqdm(total=len(results) + len(todo), initial=len(results), desc=desc, unit="item",
                  disable=not progress) as bar:
            held_elsewhere = []
            for b in distributed.own_first(len(batches), job.index, job.count):
                if settle(batches[b], wait=False):
                    bar.update(sum(i in missing for i in batches[b]))
                else:
                    held_elsewhere.append(b)
            for b in held_elsewhere:  # wait for the processes computing them, then read them
                settle(batches[b], wait=True)
                bar.update(sum(i in missing for i in batches[b]))
        return [results[k] for k in keys]


def default_store() -> Store:
    """The project's store, ``cache_dir() / "results"`` (``$MEMORIES_CACHE`` is honoured)."""
    return Store(cache_dir() / "results")
