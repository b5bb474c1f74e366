"""The results store: keys, atomic entries, corruption checks, resumable batch computation."""

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from memories_lib.core import store as store_module
from memories_lib.core.store import Store, StoreCorruptError, default_store, hash_image, hash_tensor


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.setenv("MEMORIES_CACHE", str(tmp_path / "cache"))
    return Store(tmp_path / "results")


def sample_tensors(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "seeds": torch.randn(2, 4, 8, 8, generator=g),
        "half": torch.randn(3, generator=g).half(),
        "bf16": torch.randn(3, generator=g).bfloat16(),
        "index": torch.arange(5),
    }


# --------------------------------------------------------------------------- keys and hashes


def test_key_is_canonical_and_sensitive_to_every_part():
    k = Store.key(model="abc", image="def", method="renoise", params={"steps": 50, "guidance": 0.0})
    assert len(k) == 64
    assert k == Store.key(params={"guidance": 0.0, "steps": 50}, method="renoise", image="def", model="abc")
    assert k != Store.key(model="abc", image="def", method="renoise", params={"steps": 51, "guidance": 0.0})
    assert k != Store.key(model="abc", image="xyz", method="renoise", params={"steps": 50, "guidance": 0.0})
    assert Store.key(path=Path("/a/b")) == Store.key(path="/a/b")
    assert Store.key(steps=1) != Store.key(steps=1.0)  # documented: types are part of the key


def test_key_refuses_tensors_and_unknown_types():
    with pytest.raises(TypeError, match="hash_tensor"):
        Store.key(image=torch.zeros(3))
    with pytest.raises(TypeError, match="hash_tensor"):
        Store.key(params={"mask": np.zeros(3)})
    with pytest.raises(TypeError, match="unsupported"):
        Store.key(thing=object())
    with pytest.raises(ValueError):
        Store.key()


def test_key_accepts_dataclasses_and_numpy_scalars():
    @dataclass
    class Config:
        steps: int = 50
        lr: float = 0.01

    assert Store.key(cfg=Config()) == Store.key(cfg=Config(steps=np.int64(50), lr=np.float64(0.01)))
    assert Store.key(cfg=Config()) != Store.key(cfg=Config(steps=10))


def test_hash_tensor_depends_on_values_dtype_and_shape_only():
    t = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    assert hash_tensor(t) == hash_tensor(t.clone())
    assert hash_tensor(t.T) == hash_tensor(t.T.contiguous())  # layout does not matter
    assert hash_tensor(t) != hash_tensor(t.reshape(4, 3))
    assert hash_tensor(t) != hash_tensor(t.double())
    t2 = t.clone()
    t2[0, 0] = 0.5
    assert hash_tensor(t) != hash_tensor(t2)
    assert hash_tensor(t.numpy()) == hash_tensor(t)
    assert len(hash_tensor(torch.tensor(1.0, dtype=torch.bfloat16))) == 16


def test_hash_image_of_a_file_is_of_its_bytes(tmp_path):
    p = tmp_path / "a.bin"
    p.write_bytes(b"abc")
    h = hash_image(p)
    assert h == hash_image(str(p))
    p.write_bytes(b"abd")
    assert hash_image(p) != h
    with pytest.raises(FileNotFoundError, match="missing.png"):
        hash_image(tmp_path / "missing.png")


# --------------------------------------------------------------------------- entries


def test_put_get_round_trip(store):
    key = Store.key(case="round-trip")
    assert key not in store and store.get(key) is None
    tensors = sample_tensors()
    store.put(key, tensors, {"psnr": [31.5, 29.0], "method": "ddim", "pair": (1, 2)}, parts={"case": "round-trip"})
    assert key in store
    entry = store.get(key)
    assert entry.key == key
    assert set(entry.tensors) == set(tensors)
    for name, t in tensors.items():
        assert entry.tensors[name].dtype == t.dtype
        assert torch.equal(entry.tensors[name], t)
    assert entry.meta == {"psnr": [31.5, 29.0], "method": "ddim", "pair": [1, 2]}
    assert entry.parts["case"] == "round-trip"
    assert list(store.root.rglob("*.tmp")) == []  # no temporary files left behind


def test_put_refuses_bad_inputs(store):
    key = Store.key(case="bad")
    with pytest.raises(TypeError, match="not JSON"):
        store.put(key, {}, {"x": object()})
    with pytest.raises(TypeError, match="torch.Tensor"):
        store.put(key, {"a": np.zeros(2)}, {})
    with pytest.raises(ValueError, match="store key"):
        store.put("not-a-key", {}, {})
    assert key not in store


def test_entries_are_deterministic(tmp_path):
    a, b = Store(tmp_path / "a"), Store(tmp_path / "b")
    key = Store.key(case="det")
    a.put(key, sample_tensors(), {"v": 1})
    b.put(key, sample_tensors(), {"v": 1})
    for pa, pb in zip(a.paths(key), b.paths(key)):
        assert pa.read_bytes() == pb.read_bytes()


def test_a_truncated_entry_is_rejected_not_returned(store):
    key = Store.key(case="truncated")
    store.put(key, sample_tensors(), {})
    data_path, _ = store.paths(key)
    data = data_path.read_bytes()
    data_path.write_bytes(data[: len(data) // 2])
    with pytest.raises(StoreCorruptError, match="truncated") as info:
        store.get(key)
    assert str(data_path) in str(info.value) and "discard" in str(info.value)
    assert store.discard(key)
    assert key not in store and store.get(key) is None


def test_an_altered_entry_fails_its_checksum(store):
    key = Store.key(case="altered")
    store.put(key, sample_tensors(), {})
    data_path, _ = store.paths(key)
    data = bytearray(data_path.read_bytes())
    data[-1] ^= 0xFF  # same length, one byte of tensor data flipped
    data_path.write_bytes(bytes(data))
    with pytest.raises(StoreCorruptError, match="checksum"):
        store.get(key)


def test_corrupt_or_orphaned_metadata(store):
    key = Store.key(case="meta")
    store.put(key, sample_tensors(), {})
    data_path, meta_path = store.paths(key)
    meta_path.write_text(meta_path.read_text()[:20])
    with pytest.raises(StoreCorruptError, match="metadata"):
        store.get(key)
    # a crash between the two writes leaves a tensor file without metadata: no entry
    meta_path.unlink()
    assert data_path.exists() and store.get(key) is None and key not in store


def test_a_failed_write_leaves_no_entry_and_no_temporary_file(store, monkeypatch):
    key = Store.key(case="crash")

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(store_module.os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        store.put(key, sample_tensors(), {})
    monkeypatch.undo()
    assert key not in store
    assert [p for p in store.root.rglob("*") if p.is_file()] == []


def test_the_tensors_are_written_before_the_metadata_that_points_at_them(store, monkeypatch):
    """Killed between its two writes, a put leaves tensors without metadata (no entry), never metadata without
    tensors (a corrupt one); the next put of the key succeeds."""
    key = Store.key(case="half")
    data_path, meta_path = store.paths(key)
    real_replace, moved = store_module.os.replace, []

    def killed_at_the_second(src, dst):
        moved.append(Path(dst))
        if len(moved) == 2:
            raise OSError("killed")
        real_replace(src, dst)

    monkeypatch.setattr(store_module.os, "replace", killed_at_the_second)
    with pytest.raises(OSError, match="killed"):
        store.put(key, sample_tensors(), {"v": 1})
    monkeypatch.undo()
    assert moved == [data_path, meta_path]
    assert data_path.is_file() and not meta_path.exists() and key not in store and store.get(key) is None
    assert [p.name for p in data_path.parent.iterdir()] == [data_path.name]  # the metadata's temporary file is gone
    store.put(key, sample_tensors(), {"v": 2})
    assert store.get(key).meta == {"v": 2}


def test_a_failed_folder_write_leaves_the_old_folder_and_no_temporary_one(tmp_path):
    target = tmp_path / "models" / "model-0"

    def first(tmp):
        tmp.mkdir()
        (tmp / "weights").write_text("first")

    def broken(tmp):
        tmp.mkdir()
        (tmp / "weights").write_text("half")
        raise RuntimeError("interrupted")

    def second(tmp):
        tmp.mkdir()
        (tmp / "other").write_text("second")

    store_module.write_folder_atomically(target, first)
    with pytest.raises(RuntimeError, match="interrupted"):
        store_module.write_folder_atomically(target, broken)
    assert (target / "weights").read_text() == "first"
    assert sorted(p.name for p in target.parent.iterdir()) == ["model-0"]  # no .model-0-* folder left
    store_module.write_folder_atomically(target, second)  # a rewrite replaces the folder, nothing of it merged
    assert sorted(p.name for p in target.iterdir()) == ["other"]


def test_get_or_compute_computes_once(store):
    calls = []

    def compute():
        calls.append(1)
        return {"x": torch.ones(2)}, {"n": len(calls)}

    parts = {"model": "m", "image": "i", "method": "ddim"}
    first = store.get_or_compute(parts, compute)
    second = store.get_or_compute(parts, compute)
    assert len(calls) == 1
    assert torch.equal(first.tensors["x"], second.tensors["x"]) and second.meta == {"n": 1}
    assert second.parts["method"] == "ddim"


def test_default_store_honours_memories_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MEMORIES_CACHE", str(tmp_path / "elsewhere"))
    assert default_store().root == tmp_path / "elsewhere" / "results"


# --------------------------------------------------------------------------- map_items


class Crash(RuntimeError):
    pass


def make_compute(log: list, crash_after: int | None = None):
    """A compute_batch that records its batches and raises after ``crash_after`` of them."""

    def compute_batch(batch):
        if crash_after is not None and len(log) >= crash_after:
            raise Crash("killed")
        log.append(list(batch))
        return [({"sq": torch.tensor([float(x) ** 2])}, {"item": x}) for x in batch]

    return compute_batch


def test_map_items_resumes_after_a_crash_without_recomputing(store):
    items = list(range(10))
    key_fn = lambda x: {"item": x, "method": "square"}  # noqa: E731
    log: list = []
    with pytest.raises(Crash):
        store.map_items(items, key_fn, make_compute(log, crash_after=2), batch_size=3)
    assert log == [[0, 1, 2], [3, 4, 5]]  # two batches finished and were stored before the crash
    assert sum(Store.key(**key_fn(x)) in store for x in items) == 6

    log2: list = []
    results = store.map_items(items, key_fn, make_compute(log2), batch_size=3)
    assert log2 == [[6, 7, 8], [9]]  # only the rest
    assert [e.meta["item"] for e in results] == items  # input order
    assert [e.tensors["sq"].item() for e in results] == [float(x * x) for x in items]

    log3: list = []
    again = store.map_items(items, key_fn, make_compute(log3), batch_size=3)
    assert log3 == []  # everything served from disk
    assert [e.meta for e in again] == [e.meta for e in results]


def test_map_items_serves_cached_items_in_order_and_dedupes(store):
    key_fn = lambda x: Store.key(item=x)  # noqa: E731
    store.map_items([4, 2], key_fn, make_compute([]), batch_size=8)
    log: list = []
    results = store.map_items([1, 2, 3, 2, 4, 1], key_fn, make_compute(log), batch_size=2)
    assert log == [[1, 3]]  # 2 and 4 were stored; 1 is computed once
    assert [e.meta["item"] for e in results] == [1, 2, 3, 2, 4, 1]


def test_map_items_checks_the_batch_output(store):
    with pytest.raises(ValueError, match="returned 1 results for a batch of 2"):
        store.map_items([1, 2], lambda x: {"item": x}, lambda batch: [({}, {})], batch_size=2)
    with pytest.raises(ValueError, match="batch_size"):
        store.map_items([1], lambda x: {"item": x}, make_compute([]), batch_size=0)


def test_map_items_on_a_corrupt_entry(store):
    key_fn = lambda x: {"item": x}  # noqa: E731
    store.map_items([1, 2], key_fn, make_compute([]), batch_size=2)
    data_path, _ = store.paths(Store.key(item=2))
    data_path.write_bytes(data_path.read_bytes()[:10])
    with pytest.raises(StoreCorruptError):
        store.map_items([1, 2], key_fn, make_compute([]))
    log: list = []
    results = store.map_items([1, 2], key_fn, make_compute(log), recompute_corrupt=True)
    assert log == [[2]]
    assert results[1].tensors["sq"].item() == 4.0


def _compute_slowly_in_another_process(root, started, items):
    """Child process: computes ``items`` (squares, 1.5 s) in the store at ``root``, signalling when it starts."""
    import time

    def compute_batch(batch):
        Path(started).touch()
        time.sleep(1.5)
        return [({"sq": torch.tensor([float(x) ** 2])}, {"item": x, "by": "child"}) for x in batch]

    Store(root).map_items(items, lambda x: {"item": x}, compute_batch, batch_size=8)


def test_map_items_waits_for_another_process_computing_the_same_items(store, tmp_path):
    import multiprocessing
    import time

    started = tmp_path / "started"
    child = multiprocessing.get_context("fork").Process(
        target=_compute_slowly_in_another_process, args=(str(store.root), str(started), [1, 2]))
    child.start()
    try:
        deadline = time.monotonic() + 30
        while not started.exists():  # the child holds the locks of items 1 and 2 from here on
            assert time.monotonic() < deadline and child.is_alive(), "the child process never started computing"
            time.sleep(0.02)
        log: list = []
        results = store.map_items([1, 2, 3], lambda x: {"item": x}, make_compute(log), batch_size=8)
    finally:
        child.join(30)
    assert child.exitcode == 0
    assert log == [[3]]  # 1 and 2 were the child's: waited for and read, not computed twice
    assert [e.meta.get("by") for e in results] == ["child", "child", None]
    assert [e.tensors["sq"].item() for e in results] == [1.0, 4.0, 9.0]


def test_get_or_compute_takes_an_entry_stored_meanwhile(store, monkeypatch):
    parts = {"item": 7}
    real_get, calls = store.get, []

    def get_missing_once(key):  # the first look misses, as if another process stored it just after
        calls.append(key)
        return None if len(calls) == 1 else real_get(key)

    store.put(Store.key(**parts), {"sq": torch.tensor([49.0])}, {"by": "other"}, parts=parts)
    monkeypatch.setattr(store, "get", get_missing_once)
    entry = store.get_or_compute(parts, lambda: pytest.fail("computed an entry that was stored meanwhile"))
    assert entry.meta == {"by": "other"} and len(calls) == 2


def test_locked_beside_locks_a_folder_without_creating_it(tmp_path):
    import fcntl

    target = tmp_path / "models" / "model-0123"
    lock_file = target.parent / ".model-0123.lock"
    with store_module.locked_beside(target):
        assert not target.exists() and lock_file.is_file()
        with open(lock_file) as other:  # held: another lock on it fails at once
            with pytest.raises(BlockingIOError):
                fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
        store_module.write_folder_atomically(target, lambda tmp: tmp.mkdir())
    assert target.is_dir()
    with open(lock_file) as other:  # released
        fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
