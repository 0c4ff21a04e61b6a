"""The content-addressed cache of FVE item embeddings, on disk.

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
miss and is re-encoded into a later shard, which shadows it. ``python -m
recbole_reveal.fve.encoding.cache info ROOT`` summarises a cache folder.
"""

import hashlib
import json
import logging
import os
import time
import weakref
import zlib

import numpy as np

from recbole_reveal.infra.files import atomic_open

logger = logging.getLogger(__name__)

SHARD_MAGIC = b"FVESHRD2"
SHARD_SUFFIX = ".fvs"
SHARDS_DIR = "shards"
_ALIGN = 64


def embedding_key(image_sha256, prompt, model_id, settings):
    """The cache key: SHA-256 of the canonical JSON of every input that determines the embedding.

    ``settings`` holds the encoder's output-affecting options (pooling, layer, pixel budget, dtype,
    chat-template order ...; see ``FVEEncoder.settings``).
    """
    fields = {"image_sha256": image_sha256, "prompt": prompt, "model_id": model_id, "settings": settings}
    blob = json.dumps(fields, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest(), fields


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
    with atomic_open(path, "wb", fsync=False) as f:       # fsync'd here, before the rename
        head = SHARD_MAGIC + len(header).to_bytes(4, "little") + header
        f.write(head + b"\0" * _pad(len(head)))
        table = b"".join(bytes.fromhex(k) for k in keys) + crcs.tobytes()
        f.write(table + b"\0" * _pad(len(table)))
        f.write(np.ascontiguousarray(vectors, dtype="<f4").tobytes())
        f.write(lines)
        f.flush()
        os.fsync(f.fileno())
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


def cache_summary(root):
    """Entries, shard files and bytes of an embedding cache folder (read-only)."""
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
            "bytes": sum(os.path.getsize(f) for f in files)}


