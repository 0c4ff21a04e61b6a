"""The vision tower's output per image, cached: it does not depend on the prompt, so changing a prompt
re-runs only the language model. In memory it is an LRU bounded in bytes; with a directory it is also
persisted (one safetensors file per image), bounded by ``max_disk_bytes`` with least-recently-used
eviction, so later cycles and later processes skip the vision tower too."""

import logging
import os
from collections import OrderedDict

from recbole_reveal.infra.files import atomic_open

logger = logging.getLogger(__name__)


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
            with atomic_open(self._path(key), "wb", fsync=False) as f:
                f.write(blob)
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
