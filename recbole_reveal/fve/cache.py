"""Content-addressed caches for FVE: item embeddings on disk, vision-tower outputs in memory / on disk,
and image digests.

:class:`EmbeddingCache` maps (image bytes, prompt text, VLM id, encoder settings) to the final
L2-normalised embedding. Because the key is the *content*, not the item or the cycle, a cycle only
re-encodes the items whose prompt changed, and re-running a finished run re-encodes nothing.

Layout (format 2): ``<root>/shards/<time>-<pid>-<random>.fvs``, each shard holding a batch of entries
(up to ``shard_entries``, 4096): a header, the keys, a CRC-32 per vector, the float32 vectors, and the
key fields of every entry as JSON lines (for inspection). New entries are buffered and published as
one shard when the buffer is full, ``flush_seconds`` after its first entry, and at :meth:`flush` /
:meth:`close` (the encoder flushes at the end of every ``encode_items``). A shard is written to a
temporary file and renamed, so readers -- other processes included -- only ever see whole shards;
the index (key -> shard, row) is built from the shards' key tables and refreshed when a lookup misses.
A Yelp cycle writes a few dozen shards instead of two files per item. A vector that fails its CRC is a
miss and is re-encoded into a later shard, which shadows it. The per-item layout of earlier versions
(``<root>/<k[:2]>/<k>.npy`` + ``.json``) is converted on open (see :func:`migrate_legacy`).

:class:`VisionFeatureCache` keeps the vision tower's output per image (it does not depend on the
prompt), so changing a prompt re-runs only the language model. In memory it is an LRU bounded in
bytes; with a directory it is also persisted (one safetensors file per image), bounded by
``max_disk_bytes`` with least-recently-used eviction, so later cycles and later processes skip the
vision tower too.

:func:`image_digests` hashes image files in worker threads and remembers each digest by the file's
status (size, times, inode), so a later cycle of the same process does not read the images again.
"""

import argparse
import hashlib
import json
import logging
import os
import re
import threading
import time
import weakref
import zlib
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from recbole_reveal.fve.images import read_image_bytes

from recbole_reveal.infra.files import atomic_open

logger = logging.getLogger(__name__)

SHARD_MAGIC = b"FVESHRD2"
SHARD_SUFFIX = ".fvs"
SHARDS_DIR = "shards"
_ALIGN = 64
_LEGACY_DIR = re.compile(r"^[0-9a-f]{2}$")


def sha256_bytes(data):
    return hashlib.sha256(data).hexdigest()


def _atomic_write(path, write):
    """Call ``write(file_object)`` on a temporary file in ``path``'s folder, then rename it to ``path``."""
    with atomic_open(path, "wb", fsync=False) as f:
        write(f)


def embedding_key(image_sha256, prompt, model_id, settings):
    """The cache key: SHA-256 of the canonical JSON of every input that determines the embedding.

    ``settings`` holds the encoder's output-affecting options (pooling, layer, pixel budget, dtype,
    chat-template order ...; see ``FVEEncoder.settings``).
    """
    fields = {"image_sha256": image_sha256, "prompt": prompt, "model_id": model_id, "settings": settings}
    blob = json.dumps(fields, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest(), fields


# ---------------------------------------------------------------------------------------- image digests
_DIGESTS = {}                   # (path, size, mtime_ns, ctime_ns, inode) -> SHA-256 of the file's bytes
_DIGESTS_LOCK = threading.Lock()
_DIGESTS_MAX = 2_000_000


def image_digest(path):
    """``(sha256, None)`` of the file at ``path``, or ``(None, reason)`` when it is missing, unreadable
    or empty. Remembered by the file's status, so an unchanged file is read once per process."""
    if not path:
        return None, "no image path"
    try:
        st = os.stat(path)
    except OSError:
        return None, "file not found"
    memo = (os.path.abspath(path), st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)
    digest = _DIGESTS.get(memo)
    if digest is not None:
        return digest, None
    data, reason = read_image_bytes(path)
    if data is None:
        return None, reason
    digest = sha256_bytes(data)
    with _DIGESTS_LOCK:
        if len(_DIGESTS) >= _DIGESTS_MAX:
            _DIGESTS.clear()
        _DIGESTS[memo] = digest
    return digest, None


def image_digests(paths, workers=4):
    """:func:`image_digest` of every path, in order, hashed by ``workers`` threads (file reads and
    SHA-256 release the GIL)."""
    paths = list(paths)
    if workers <= 1 or len(paths) < 2:
        return [image_digest(p) for p in paths]
    with ThreadPoolExecutor(min(int(workers), len(paths))) as pool:
        return list(pool.map(image_digest, paths, chunksize=64))


# ---------------------------------------------------------------------------------------- shards
def _is_shard(name):
    return name.endswith(SHARD_SUFFIX) and not name.startswith(".tmp")


def _pad(n):
    return -n % _ALIGN


def _write_shard(folder, keys, vectors, fields):
    """Publish one shard atomically (temporary file, fsync, rename); returns its path."""
    dim = vectors.shape[1]
    crcs = np.array([zlib.crc32(v.tobytes()) for v in vectors], dtype="<u4")
    lines = "".join(json.dumps(f, sort_keys=True, ensure_ascii=False) + "\n" for f in fields).encode("utf-8")
    header = json.dumps({"n": len(keys), "dim": dim, "fields_bytes": len(lines)}).encode()
    name = f"{time.time_ns():020d}-{os.getpid()}-{os.urandom(4).hex()}{SHARD_SUFFIX}"
    path = os.path.join(folder, name)

    def write(f):
        head = SHARD_MAGIC + len(header).to_bytes(4, "little") + header
        f.write(head + b"\0" * _pad(len(head)))
        table = b"".join(bytes.fromhex(k) for k in keys) + crcs.tobytes()
        f.write(table + b"\0" * _pad(len(table)))
        f.write(np.ascontiguousarray(vectors, dtype="<f4").tobytes())
        f.write(lines)
        f.flush()
        os.fsync(f.fileno())

    _atomic_write(path, write)
    return path


class _Shard:
    """A published shard: its key table read eagerly, its vectors memory-mapped on first use."""

    def __init__(self, path):
        self.path = path
        with open(path, "rb") as f:
            head = f.read(12)
            if len(head) < 12 or head[:8] != SHARD_MAGIC:
                raise ValueError("not an FVE embedding shard")
            size = int.from_bytes(head[8:12], "little")
            meta = json.loads(f.read(size))
            self.n, self.dim = int(meta["n"]), int(meta["dim"])
            self.table_at = 12 + size + _pad(12 + size)
            table = 32 * self.n + 4 * self.n
            self.vectors_at = self.table_at + table + _pad(table)
            expected = self.vectors_at + 4 * self.n * self.dim + int(meta["fields_bytes"])
            actual = os.fstat(f.fileno()).st_size
            if actual != expected:
                raise ValueError(f"{actual} bytes, expected {expected} (truncated or damaged)")
            f.seek(self.table_at)
            raw = f.read(table)
        self.keys = [raw[32 * r:32 * r + 32] for r in range(self.n)]
        self.crcs = np.frombuffer(raw, dtype="<u4", count=self.n, offset=32 * self.n)
        self._vectors = None

    def vector(self, row):
        if self._vectors is None:
            self._vectors = np.memmap(self.path, dtype="<f4", mode="r", offset=self.vectors_at,
                                      shape=(self.n, self.dim))
        vec = np.array(self._vectors[row], dtype=np.float32)
        return vec, zlib.crc32(vec.tobytes()) == int(self.crcs[row])

    def fields(self):
        with open(self.path, "rb") as f:
            f.seek(self.vectors_at + 4 * self.n * self.dim)
            return [json.loads(line) for line in f.read().decode("utf-8").splitlines()]


def _flush_pending(root, pending):
    """Publish ``pending`` ({key: (vector, fields)}) as shards, one per vector length; empties it."""
    if not pending:
        return []
    folder = os.path.join(root, SHARDS_DIR)
    os.makedirs(folder, exist_ok=True)
    by_dim = {}
    for key, (vec, fields) in pending.items():
        by_dim.setdefault(vec.shape[0], []).append((key, vec, fields))
    paths = []
    for entries in by_dim.values():
        paths.append(_write_shard(folder, [k for k, _, _ in entries], np.stack([v for _, v, _ in entries]),
                                  [f or {} for _, _, f in entries]))
    pending.clear()
    return paths


class EmbeddingCache:
    """On-disk content-addressed embedding cache (module docstring) with hit / miss / write counters.

    Args:
        root: the cache folder, shared by runs and processes.
        shard_entries: entries per published shard.
        flush_seconds: a buffered entry is published at the latest this long after it was put (at the
            next ``put``), so a killed process loses at most about this much work.
    """

    def __init__(self, root, shard_entries=4096, flush_seconds=60.0):
        self.root = str(root)
        self.shard_entries, self.flush_seconds = int(shard_entries), float(flush_seconds)
        os.makedirs(os.path.join(self.root, SHARDS_DIR), exist_ok=True)
        self.hits = self.misses = self.writes = self.corrupt = 0
        self._shards = []               # loaded _Shard objects, in name (= publication) order
        self._loaded = set()            # their file names
        self._index = {}                # raw key bytes -> (shard number, row); later shards win
        self._pending = {}              # hex key -> (vector, fields), not yet published
        self._pending_since = None
        self._refreshed = 0.0
        self._finalizer = weakref.finalize(self, _flush_pending, self.root, self._pending)
        if legacy_entries(self.root):
            migrate_legacy(self.root)
        self.refresh()

    # ------------------------------------------------------------------ index
    def refresh(self):
        """Load the shards published since the last refresh (by any process)."""
        folder = os.path.join(self.root, SHARDS_DIR)
        names = sorted(n for n in os.listdir(folder) if _is_shard(n) and n not in self._loaded)
        for name in names:
            self._loaded.add(name)
            try:
                shard = _Shard(os.path.join(folder, name))
            except (OSError, ValueError, KeyError) as e:
                logger.warning("FVE embedding cache: ignoring unreadable shard %s (%s); its entries will be "
                               "re-encoded", os.path.join(folder, name), e)
                continue
            number = len(self._shards)
            self._shards.append(shard)
            for row, key in enumerate(shard.keys):
                self._index[key] = (number, row)
        self._refreshed = time.monotonic()

    def __len__(self):
        return len(self._index) + sum(1 for k in self._pending if bytes.fromhex(k) not in self._index)

    def get(self, key, dim=None):
        """The cached float32 vector, or None (a miss). Malformed entries are misses (logged)."""
        if key in self._pending:
            vec = self._pending[key][0]
            if dim is None or vec.shape[0] == dim:
                self.hits += 1
                return vec.copy()
            return self._malformed(key, "not yet published", f"{vec.dtype} {vec.shape}")
        raw = bytes.fromhex(key)
        where = self._index.get(raw)
        if where is None and time.monotonic() - self._refreshed > 1.0:
            self.refresh()                                  # another process may have published it
            where = self._index.get(raw)
        if where is None:
            self.misses += 1
            return None
        shard = self._shards[where[0]]
        try:
            vec, intact = shard.vector(where[1])
            problem = (None if intact and bool(np.isfinite(vec).all()) and (dim is None or vec.shape[0] == dim)
                       else "checksum mismatch" if not intact else f"{vec.dtype} {vec.shape}")
        except (OSError, ValueError) as e:
            problem = str(e)
        if problem:
            return self._malformed(key, shard.path, problem)
        self.hits += 1
        return vec

    def _malformed(self, key, where, problem):
        self.corrupt += 1
        self.misses += 1
        logger.warning("FVE embedding cache: ignoring malformed entry %s in %s (%s); it will be rewritten",
                       key, where, problem)
        return None

    # ------------------------------------------------------------------ writing
    def put(self, key, vector, fields=None):
        vector = np.array(vector, dtype=np.float32).reshape(-1)
        if not np.isfinite(vector).all():
            raise ValueError(f"refusing to cache a non-finite embedding under key {key}")
        if not self._pending:
            self._pending_since = time.monotonic()
        self._pending[key] = (vector, fields)
        self.writes += 1
        if (len(self._pending) >= self.shard_entries
                or time.monotonic() - self._pending_since >= self.flush_seconds):
            self.flush()

    def flush(self):
        """Publish the buffered entries as shard(s) now."""
        for path in _flush_pending(self.root, self._pending):
            name = os.path.basename(path)
            self._loaded.add(name)
            shard = _Shard(path)
            self._shards.append(shard)
            for row, key in enumerate(shard.keys):
                self._index[key] = (len(self._shards) - 1, row)

    def close(self):
        self.flush()
        for shard in self._shards:
            shard._vectors = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ------------------------------------------------------------------ counters
    def stats(self):
        return {"hits": self.hits, "misses": self.misses, "writes": self.writes, "corrupt": self.corrupt}

    def reset_stats(self):
        self.hits = self.misses = self.writes = self.corrupt = 0

    def files(self):
        """The cache's shard files (published), oldest first."""
        folder = os.path.join(self.root, SHARDS_DIR)
        return sorted(os.path.join(folder, n) for n in os.listdir(folder) if _is_shard(n))


# ---------------------------------------------------------------------------------------- old layout
def legacy_entries(root):
    """The ``.npy`` files of the per-item layout of earlier versions under ``root``."""
    if not os.path.isdir(root):
        return []
    found = []
    for entry in os.scandir(root):
        if entry.is_dir() and _LEGACY_DIR.match(entry.name):
            found += [os.path.join(entry.path, n) for n in os.listdir(entry.path)
                      if n.endswith(".npy") and not n.startswith(".tmp")]
    return sorted(found)


def migrate_legacy(root, shard_entries=4096):
    """Convert the per-item layout (``<k[:2]>/<k>.npy`` + ``<k>.json``) under ``root`` into shards and
    delete the old files. Unreadable old entries are dropped (they would have been misses). Safe to
    run from several processes at once (a lock file serialises them). Returns (converted, dropped)."""
    import fcntl

    lock_path = os.path.join(root, ".migrate.lock")
    try:
        lock = open(lock_path, "a")
    except OSError as e:
        raise RuntimeError(
            f"FVE embedding cache {root} holds entries in the per-item layout of an earlier version and cannot "
            f"be converted here ({e}); run `python -m recbole_reveal.fve.cache migrate {root}` where the folder "
            "is writable, or point fve_cache_dir at a new folder") from e
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        old = legacy_entries(root)              # again: another process may have converted them meanwhile
        if not old:
            return 0, 0
        logger.info("FVE embedding cache: converting %d entries of the per-item layout in %s into shards",
                    len(old), root)
        pending, done, converted, dropped = {}, [], 0, 0
        for path in old:
            key = os.path.basename(path)[:-4]
            meta_path = path[:-4] + ".json"
            try:
                vec = np.load(path, allow_pickle=False)
                if vec.dtype != np.float32 or vec.ndim != 1 or not np.isfinite(vec).all() or len(key) != 64:
                    raise ValueError(f"{vec.dtype} {vec.shape}")
                bytes.fromhex(key)
                fields = None
                if os.path.isfile(meta_path):
                    with open(meta_path, encoding="utf-8") as f:
                        fields = json.load(f)
                pending[key] = (vec, fields)
                converted += 1
            except (OSError, ValueError) as e:
                logger.warning("FVE embedding cache: dropping unreadable old entry %s (%s)", path, e)
                dropped += 1
            done.append(path)
            if len(pending) >= shard_entries:
                _flush_pending(root, pending)
                _remove_legacy(done)
                done = []
        _flush_pending(root, pending)
        _remove_legacy(done)
        for entry in os.scandir(root):          # the emptied two-letter folders and their leftovers
            if entry.is_dir() and _LEGACY_DIR.match(entry.name):
                for name in os.listdir(entry.path):
                    if name.startswith(".tmp") or name.endswith(".json"):
                        os.remove(os.path.join(entry.path, name))
                if not os.listdir(entry.path):
                    os.rmdir(entry.path)
        logger.info("FVE embedding cache: converted %d entries (%d unreadable dropped)", converted, dropped)
        return converted, dropped


def _remove_legacy(paths):
    for path in paths:
        for p in (path, path[:-4] + ".json"):
            try:
                os.remove(p)
            except FileNotFoundError:
                pass


# ---------------------------------------------------------------------------------------- vision outputs
class VisionFeatures:
    """One image's vision-tower output: the merged patch embeddings fed to the language model
    (``pooler``: [tokens, hidden]), Qwen3-VL's DeepStack features (one tensor per injected layer,
    empty for Qwen2.5-VL), and the patch grid (t, h, w) the positions are computed from."""

    __slots__ = ("pooler", "deepstack", "grid")

    def __init__(self, pooler, deepstack, grid):
        self.pooler, self.deepstack, self.grid = pooler, list(deepstack), tuple(int(g) for g in grid)

    @property
    def nbytes(self):
        return sum(t.numel() * t.element_size() for t in [self.pooler, *self.deepstack])

    def to_tensors(self):
        import torch

        out = {"pooler": self.pooler.contiguous(), "grid": torch.tensor(self.grid, dtype=torch.int64)}
        out.update({f"deepstack_{i}": t.contiguous() for i, t in enumerate(self.deepstack)})
        return out

    @classmethod
    def from_tensors(cls, tensors):
        n = sum(1 for k in tensors if k.startswith("deepstack_"))
        return cls(tensors["pooler"], [tensors[f"deepstack_{i}"] for i in range(n)], tensors["grid"].tolist())


class VisionFeatureCache:
    """Per-image vision-tower outputs: an LRU in memory bounded by ``max_bytes``, optionally
    persisted under ``directory`` (one safetensors file per image and key) and bounded there by
    ``max_disk_bytes`` (0 = no bound): when a write takes the folder over it, the least recently used
    files (by modification time, which a disk hit refreshes) are deleted down to 90 % of the bound.

    Keys come from the encoder: image SHA-256 + VLM id + dtype + pixel budget. The object can be
    shared by several encoders / cycles of one process; entries are CPU tensors. Several processes may
    share the directory: a file another process evicted is a miss.
    """

    def __init__(self, max_bytes=2 * 2**30, directory=None, max_disk_bytes=0):
        self.max_bytes = int(max_bytes)
        self.directory = str(directory) if directory else None
        self.max_disk_bytes = int(max_disk_bytes or 0)
        self._memory = OrderedDict()
        self._bytes = 0
        self._disk_bytes = None         # estimate of the folder's size (scanned on first write)
        self.memory_hits = self.disk_hits = self.misses = self.evicted = 0

    def _path(self, key):
        return os.path.join(self.directory, key[:2], key + ".safetensors")

    def get(self, key):
        if key in self._memory:
            self._memory.move_to_end(key)
            self.memory_hits += 1
            return self._memory[key]
        if self.directory and os.path.isfile(self._path(key)):
            from safetensors.torch import load_file

            path = self._path(key)
            try:
                feats = VisionFeatures.from_tensors(load_file(path))
                os.utime(path)                          # recently used: evicted last
            except FileNotFoundError:
                pass                                    # evicted by another process meanwhile
            except Exception as e:  # noqa: BLE001  (safetensors raises several types for a bad file)
                logger.warning("FVE vision cache: ignoring unreadable %s (%s)", path, e)
            else:
                self.disk_hits += 1
                self._remember(key, feats)
                return feats
        self.misses += 1
        return None

    def peek(self, key):
        """The in-memory entry or None, without touching counters or the disk."""
        return self._memory.get(key)

    def put(self, key, feats):
        self._remember(key, feats)
        if self.directory:
            from safetensors.torch import save

            blob = save(feats.to_tensors())
            if self.max_disk_bytes and len(blob) > self.max_disk_bytes:
                return
            _atomic_write(self._path(key), lambda f: f.write(blob))
            if self.max_disk_bytes:
                if self._disk_bytes is None:
                    self._disk_bytes = sum(size for _, size, _ in self._disk_files())
                else:
                    self._disk_bytes += len(blob)
                if self._disk_bytes > self.max_disk_bytes:
                    self._evict()

    def _disk_files(self):
        """``[(modification time, size, path)]`` of the persisted entries."""
        files = []
        if not self.directory or not os.path.isdir(self.directory):
            return files
        for sub in os.scandir(self.directory):
            if not sub.is_dir():
                continue
            for entry in os.scandir(sub.path):
                if entry.name.endswith(".safetensors") and not entry.name.startswith(".tmp"):
                    try:
                        st = entry.stat()
                    except FileNotFoundError:
                        continue
                    files.append((st.st_mtime_ns, st.st_size, entry.path))
        return files

    def _evict(self):
        files = sorted(self._disk_files())          # rescanned: other processes write here too
        total = sum(size for _, size, _ in files)
        target = int(0.9 * self.max_disk_bytes)
        for _, size, path in files:
            if total <= target:
                break
            try:
                os.remove(path)
                self.evicted += 1
            except FileNotFoundError:
                pass
            total -= size
        self._disk_bytes = total

    def _remember(self, key, feats):
        if self.max_bytes <= 0 or feats.nbytes > self.max_bytes:
            return
        if key in self._memory:
            self._bytes -= self._memory.pop(key).nbytes
        self._memory[key] = feats
        self._bytes += feats.nbytes
        while self._bytes > self.max_bytes:
            _, old = self._memory.popitem(last=False)
            self._bytes -= old.nbytes

    def __len__(self):
        return len(self._memory)

    def values(self):
        """The in-memory entries, least recently used first."""
        return list(self._memory.values())

    def stats(self):
        return {"memory_hits": self.memory_hits, "disk_hits": self.disk_hits, "misses": self.misses,
                "entries": len(self._memory), "bytes": self._bytes, "evicted": self.evicted}

    def reset_stats(self):
        self.memory_hits = self.disk_hits = self.misses = self.evicted = 0


# ---------------------------------------------------------------------------------------- command line
def cache_summary(root):
    """Entries, shard files and bytes of an embedding cache folder, and its old-layout entries (read-only)."""
    folder = os.path.join(root, SHARDS_DIR)
    files = sorted(os.path.join(folder, n) for n in os.listdir(folder) if _is_shard(n)) \
        if os.path.isdir(folder) else []
    keys, unreadable = set(), 0
    for path in files:
        try:
            keys.update(_Shard(path).keys)
        except (OSError, ValueError, KeyError):
            unreadable += 1
    return {"entries": len(keys), "shard_files": len(files), "unreadable_shards": unreadable,
            "bytes": sum(os.path.getsize(f) for f in files), "old_layout_entries": len(legacy_entries(root))}


def main(argv=None):
    p = argparse.ArgumentParser(description="Inspect (info) or convert from the per-item layout of earlier "
                                            "versions (migrate) an FVE embedding cache folder.")
    p.add_argument("action", choices=["info", "migrate"])
    p.add_argument("root")
    a = p.parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    if not os.path.isdir(a.root):
        raise SystemExit(f"not a folder: {a.root}")
    if a.action == "migrate":
        converted, dropped = migrate_legacy(a.root)
        print(f"converted {converted} entries ({dropped} unreadable dropped)")
    summary = cache_summary(a.root)
    print(f"{a.root}: {summary['entries']} entries in {summary['shard_files']} shard files "
          f"({summary['bytes'] / 2**20:.1f} MiB, {summary['unreadable_shards']} unreadable); "
          f"old-layout entries: {summary['old_layout_entries']}")
    return summary


if __name__ == "__main__":
    main()
