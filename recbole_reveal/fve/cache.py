"""Content-addressed caches for FVE: item embeddings on disk, vision-tower outputs in memory / on disk.

:class:`EmbeddingCache` maps (image bytes, prompt text, VLM id, encoder settings) to the final
L2-normalised embedding. Because the key is the *content*, not the item or the cycle, a cycle only
re-encodes the items whose prompt changed, and re-running a finished run re-encodes nothing.
Layout: ``<root>/<k[:2]>/<k>.npy`` (one float32 vector per file, ``k`` = SHA-256 of the key); the
key's fields are kept beside it in ``<k>.json`` for inspection. Writes go to a temporary file and are
renamed, so a killed run never leaves a partial entry; a corrupt entry is treated as a miss and
rewritten. Several processes (one per GPU) may share a root: identical keys write identical bytes.

:class:`VisionFeatureCache` keeps the vision tower's output per image (it does not depend on the
prompt), so changing a prompt re-runs only the language model. In memory it is an LRU bounded in
bytes; with a directory it is also persisted (safetensors), so later cycles and later processes
skip the vision tower too.
"""

import hashlib
import json
import logging
import os
from collections import OrderedDict

import numpy as np
import torch

from recbole_reveal.files import atomic_open

logger = logging.getLogger(__name__)


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


class EmbeddingCache:
    """On-disk content-addressed embedding cache with hit / miss / write counters."""

    def __init__(self, root):
        self.root = str(root)
        os.makedirs(self.root, exist_ok=True)
        self.hits = self.misses = self.writes = self.corrupt = 0

    def _path(self, key):
        return os.path.join(self.root, key[:2], key + ".npy")

    def get(self, key, dim=None):
        """The cached float32 vector, or None (a miss). Unreadable or malformed entries are misses."""
        path = self._path(key)
        if not os.path.isfile(path):
            self.misses += 1
            return None
        try:
            vec = np.load(path, allow_pickle=False)
            ok = (vec.dtype == np.float32 and vec.ndim == 1 and bool(np.isfinite(vec).all())
                  and (dim is None or vec.shape[0] == dim))
        except (OSError, ValueError) as e:
            ok, vec = False, e
        if not ok:
            self.corrupt += 1
            self.misses += 1
            logger.warning("FVE embedding cache: ignoring malformed entry %s (%s); it will be rewritten",
                           path, vec if isinstance(vec, Exception) else f"{vec.dtype} {vec.shape}")
            return None
        self.hits += 1
        return vec

    def put(self, key, vector, fields=None):
        vector = np.ascontiguousarray(vector, dtype=np.float32).reshape(-1)
        if not np.isfinite(vector).all():
            raise ValueError(f"refusing to cache a non-finite embedding under key {key}")
        path = self._path(key)
        if fields is not None:
            meta = json.dumps(fields, sort_keys=True, ensure_ascii=False, indent=1).encode("utf-8")
            _atomic_write(path[:-4] + ".json", lambda f: f.write(meta))
        _atomic_write(path, lambda f: np.save(f, vector))
        self.writes += 1

    def stats(self):
        return {"hits": self.hits, "misses": self.misses, "writes": self.writes, "corrupt": self.corrupt}

    def reset_stats(self):
        self.hits = self.misses = self.writes = self.corrupt = 0


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
        out = {"pooler": self.pooler.contiguous(), "grid": torch.tensor(self.grid, dtype=torch.int64)}
        out.update({f"deepstack_{i}": t.contiguous() for i, t in enumerate(self.deepstack)})
        return out

    @classmethod
    def from_tensors(cls, tensors):
        n = sum(1 for k in tensors if k.startswith("deepstack_"))
        return cls(tensors["pooler"], [tensors[f"deepstack_{i}"] for i in range(n)], tensors["grid"].tolist())


class VisionFeatureCache:
    """Per-image vision-tower outputs: an LRU in memory bounded by ``max_bytes``, optionally
    persisted under ``directory`` (one safetensors file per image and key).

    Keys come from the encoder: image SHA-256 + VLM id + dtype + pixel budget. The object can be
    shared by several encoders / cycles of one process; entries are CPU tensors.
    """

    def __init__(self, max_bytes=2 * 2**30, directory=None):
        self.max_bytes = int(max_bytes)
        self.directory = str(directory) if directory else None
        self._memory = OrderedDict()
        self._bytes = 0
        self.memory_hits = self.disk_hits = self.misses = 0

    def _path(self, key):
        return os.path.join(self.directory, key[:2], key + ".safetensors")

    def get(self, key):
        if key in self._memory:
            self._memory.move_to_end(key)
            self.memory_hits += 1
            return self._memory[key]
        if self.directory and os.path.isfile(self._path(key)):
            from safetensors.torch import load_file

            try:
                feats = VisionFeatures.from_tensors(load_file(self._path(key)))
            except Exception as e:  # noqa: BLE001  (safetensors raises several types for a bad file)
                logger.warning("FVE vision cache: ignoring unreadable %s (%s)", self._path(key), e)
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
            _atomic_write(self._path(key), lambda f: f.write(blob))

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
                "entries": len(self._memory), "bytes": self._bytes}

    def reset_stats(self):
        self.memory_hits = self.disk_hits = self.misses = 0
