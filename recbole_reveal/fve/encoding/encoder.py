"""FVE's vision encoding (paper eq. 1): a prompt-conditioned item embedding from a frozen VLM (any family
of :mod:`recbole_reveal.fve.vlm.families`: Qwen2.5-VL, Qwen3-VL, Gemma-3, InternVL3).

For each item: the chat template renders one user turn holding the prompt and the image, the
language model runs on it, the hidden states of one layer (``fve_layer``, default the last) are
mean-pooled over the positions chosen by ``fve_pooling``, and the vector is L2-normalised.

The user turn's layout (prompt and image order, the pooled positions, ``fve_pooling``) and the
image preprocessing are :class:`~recbole_reveal.fve.encoding.chat.ChatTurn`'s job; this module runs the
turns through the model in batches and keeps the caches.

Efficiency: the vision tower's output depends on the image and the pixel budget only, so it is
computed once per image and kept in a :class:`~recbole_reveal.fve.encoding.cache.embeddings.VisionFeatureCache`; the
language model then receives it through transformers' ``mm_encoder_outputs``. Sequences are
tokenised once, sorted by length inside a window and padded per batch. With an
:class:`~recbole_reveal.fve.encoding.cache.embeddings.EmbeddingCache`, items whose (image, prompt, model, settings) were
encoded before are not run at all.

Missing images: an item whose image file is missing, empty, unreadable, not decodable, or rejected
by the image processor (e.g. aspect ratio above 200) gets a fallback row by ``fve_missing_image``:
``zero`` (default; all zeros, the rule of the static feature extractor) or ``random`` (the reference
code's N(0, 0.02) vector, L2-normalised, seeded by the item token so it is reproducible). Each call
logs one warning with the count and item tokens, and returns them in ``EncodeResult.missing``.
"""

import hashlib
import inspect
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import torch

from recbole_reveal.fve.encoding.cache.digests import image_digests, sha256_bytes
from recbole_reveal.fve.encoding.cache.embeddings import embedding_key
from recbole_reveal.fve.encoding.cache.vision import VisionFeatureCache, VisionFeatures
from recbole_reveal.fve.encoding.chat import DEFAULT_POOLING, ChatTurn
from recbole_reveal.fve.encoding.images import decode_image

logger = logging.getLogger(__name__)

MISSING_IMAGE_RULES = ("zero", "random")
CACHE_FORMAT = 1            # bump when the embedding computation changes in a way settings do not show
PROGRESS_EVERY_S = 10.0
SORT_WINDOW_BATCHES = 8     # sequences are length-sorted within windows of this many batches


@dataclass(frozen=True)
class ItemRequest:
    """One item to encode: its token (item_id), the image file, the prompt."""

    token: str
    image_path: str
    prompt: str


@dataclass
class EncodeResult:
    """Output of :meth:`FVEEncoder.encode_items`: rows in request order."""

    tokens: list
    matrix: np.ndarray
    encoded: list = field(default_factory=list)      # tokens the language model ran for
    cached: list = field(default_factory=list)       # tokens served by the embedding cache
    missing: dict = field(default_factory=dict)      # token -> reason (fallback row written)
    seconds: float = 0.0
    vision: dict = field(default_factory=dict)       # vision-cache counters of this call
    work: dict = field(default_factory=dict)         # language-model passes and tokens, vision patches, TFLOP

    def summary(self):
        return {"items": len(self.tokens), "encoded": len(self.encoded), "cache_hits": len(self.cached),
                "missing_images": len(self.missing), "missing_image_items": sorted(self.missing),
                "seconds": round(self.seconds, 3), "vision_cache": self.vision, "work": self.work}


def _shorten(tokens, limit=20):
    tokens = list(tokens)
    more = f" (+{len(tokens) - limit} more)" if len(tokens) > limit else ""
    return ", ".join(tokens[:limit]) + more


class _Job:
    """One distinct (image, prompt) to run through the language model."""

    __slots__ = ("vision_key", "load_image", "prompt", "key", "fields", "ids", "positions", "vision", "pixels",
                 "vector", "error")

    def __init__(self, vision_key, load_image, prompt, key=None, fields=None):
        self.vision_key, self.load_image, self.prompt = vision_key, load_image, prompt
        self.key, self.fields = key, fields
        self.ids = self.positions = self.vision = self.pixels = self.vector = self.error = None


class FVEEncoder:
    """Prompt-conditioned item embeddings from a :class:`~recbole_reveal.fve.vlm.load.LoadedVLM`.

    Args:
        vlm: the loaded VLM.
        pooling: one of :data:`~recbole_reveal.fve.encoding.chat.POOLINGS` (``fve_pooling``).
        layer: hidden-state index (``fve_layer``): 0 = input embeddings, ``k`` = after decoder
            layer k, -1 = the last layer (after the final norm, as the reference code takes it).
        min_pixels, max_pixels: pixel budget per image (``fve_min_pixels`` / ``fve_max_pixels``); the
            image is resized keeping its aspect ratio to sides that are multiples of patch x merge
            size with an area inside the budget. ``None`` = the folder's preprocessor_config.json.
        batch_size: sequences per language-model forward (``fve_batch_size``).
        missing_image: ``zero`` or ``random`` (``fve_missing_image``), see the module docstring.
        padding_side: ``right`` or ``left``; the embedding does not depend on it (tested).
        vision_cache: a shared :class:`VisionFeatureCache`; default a private 2 GiB in-memory one.
        preprocess_workers: threads decoding and resizing images ahead of the model
            (``fve_preprocess_workers``; 0 = on the calling thread).
    """

    def __init__(self, vlm, pooling=DEFAULT_POOLING, layer=-1, min_pixels=None, max_pixels=None,
                 batch_size=8, missing_image="zero", padding_side="right", vision_cache=None,
                 preprocess_workers=4):
        if missing_image not in MISSING_IMAGE_RULES:
            raise ValueError(f"fve_missing_image must be one of {', '.join(MISSING_IMAGE_RULES)}; "
                             f"got {missing_image!r}")
        if padding_side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
        if int(batch_size) < 1:
            raise ValueError(f"fve_batch_size must be >= 1, got {batch_size}")
        n_states = vlm.num_layers + 1
        if not -n_states <= int(layer) < n_states:
            raise ValueError(f"fve_layer {layer} is out of range for a {vlm.num_layers}-layer model "
                             f"(valid: {-n_states} .. {n_states - 1}; -1 = last layer)")
        if "mm_encoder_outputs" not in inspect.signature(vlm.model.model.forward).parameters:
            import transformers

            raise RuntimeError(f"FVE passes cached vision-tower outputs through the `mm_encoder_outputs` argument "
                               f"of transformers 5; installed transformers {transformers.__version__} lacks it: "
                               "pip install -U 'transformers>=5.23' (tested with 5.23)")
        self.vlm = vlm
        self.turn = ChatTurn(vlm, pooling, min_pixels, max_pixels)
        self.pooling = pooling
        self.layer = int(layer) % n_states
        self.min_pixels, self.max_pixels = self.turn.min_pixels, self.turn.max_pixels
        self.batch_size = int(batch_size)
        self.preprocess_workers = int(preprocess_workers)
        self.missing_image = missing_image
        self.padding_side = padding_side
        self.vision_cache = vision_cache if vision_cache is not None else VisionFeatureCache()
        # parameters behind the FLOP estimate: the language model without its embedding table, and the
        # rest of the base model (vision tower + projector); 2 FLOP per parameter per token / patch
        base = vlm.model.model
        language = sum(p.numel() for p in base.language_model.parameters())
        self.lm_params = language - base.language_model.get_input_embeddings().weight.numel()
        self.vision_params = sum(p.numel() for p in base.parameters()) - language
        self._work = {"lm_passes": 0, "lm_tokens": 0, "vision_passes": 0, "vision_patches": 0}

    # ------------------------------------------------------------------ identity
    def settings(self):
        """Every option that changes the embedding (part of the embedding-cache key)."""
        settings = {"pooling": self.pooling, "layer": self.layer, "min_pixels": self.min_pixels,
                    "max_pixels": self.max_pixels, "dtype": str(self.vlm.dtype).replace("torch.", ""),
                    "format": CACHE_FORMAT}
        if getattr(self.vlm, "quantization", None):     # quantized weights give other embeddings
            settings["quantization"] = self.vlm.quantization
        return settings

    def describe(self):
        """Provenance for the feature set's JSON."""
        return dict(self.vlm.describe(), fve_pooling=self.pooling, fve_layer=self.layer,
                    fve_min_pixels=self.min_pixels, fve_max_pixels=self.max_pixels,
                    fve_missing_image=self.missing_image, l2_normalized=True, dim=self.dim)

    @property
    def dim(self):
        return self.vlm.hidden_size

    def _vision_key(self, image_key):
        quantized = f"|{self.vlm.quantization}" if getattr(self.vlm, "quantization", None) else ""
        blob = f"{image_key}|{self.vlm.model_id}|{self.vlm.dtype}|{self.min_pixels}|{self.max_pixels}{quantized}"
        return hashlib.sha256(blob.encode()).hexdigest()

    # ------------------------------------------------------------------ public API
    def embed(self, images, prompts):
        """Embeddings of PIL ``images`` under ``prompts`` (one each): float32 ``[n, dim]``, no
        embedding cache, no missing-image rule (a bad image raises)."""
        if len(images) != len(prompts):
            raise ValueError(f"{len(images)} images but {len(prompts)} prompts")
        jobs = []
        for image, prompt in zip(images, prompts):
            self.turn.check_prompt(prompt, "embed()")
            image = image.convert("RGB")
            key = "pixels:" + sha256_bytes(f"{image.size}".encode() + image.tobytes())
            jobs.append(_Job(self._vision_key(key), (lambda im=image: im), prompt))
        self._run(jobs)
        bad = [j for j in jobs if j.error]
        if bad:
            raise ValueError(f"image could not be processed: {bad[0].error}")
        return np.stack([j.vector for j in jobs]) if jobs else np.zeros((0, self.dim), np.float32)

    def encode_items(self, requests, cache=None):
        """Encode ``requests`` (:class:`ItemRequest`), reusing ``cache`` (an EmbeddingCache) when
        given; returns an :class:`EncodeResult` with rows in request order.

        Each embedding is written to the cache as soon as its batch finishes, so a run killed
        mid-way resumes with everything finished so far.
        """
        start = time.perf_counter()
        vision_before, work_before = self.vision_cache.stats(), dict(self._work)
        requests = list(requests)
        matrix = np.zeros((len(requests), self.dim), dtype=np.float32)
        result = EncodeResult(tokens=[r.token for r in requests], matrix=matrix)
        settings = self.settings()
        encoded, cached, missing = set(), set(), {}      # row indices; row -> reason
        hits, jobs = {}, {}                              # embedding key -> first row / _Job
        rows_of = {}                                     # embedding key -> [rows]
        paths = list(dict.fromkeys(r.image_path for r in requests))     # one read per image file
        digests = dict(zip(paths, image_digests(paths, self.preprocess_workers)))   # path -> (sha256, reason)
        for i, req in enumerate(requests):
            self.turn.check_prompt(req.prompt, f"item {req.token}")
            image_sha, reason = digests[req.image_path]
            if image_sha is None:
                missing[i] = reason
                continue
            key, fields = embedding_key(image_sha, req.prompt, self.vlm.model_id, settings)
            if key in rows_of:                           # a duplicate of an earlier request
                rows_of[key].append(i)
                continue
            rows_of[key] = [i]
            vec = cache.get(key, self.dim) if cache is not None else None
            if vec is not None:
                matrix[i] = vec
                hits[key] = i
                continue
            jobs[key] = _Job(self._vision_key("file:" + image_sha), (lambda p=req.image_path: decode_image(p)),
                             req.prompt, key=key, fields=fields)

        def finish(job):
            rows = rows_of[job.key]
            if job.error:
                missing.update((r, job.error) for r in rows)
                return
            matrix[rows] = job.vector
            encoded.update(rows)
            if cache is not None:
                cache.put(job.key, job.vector, job.fields)

        try:
            self._run(list(jobs.values()), on_done=finish)
        finally:                                         # publish the buffered entries, even after an error
            if cache is not None:
                cache.flush()
        for key, first in hits.items():                  # cache hits: copy to their duplicates
            matrix[rows_of[key]] = matrix[first]
            cached.update(rows_of[key])
        for row in missing:
            matrix[row] = self._fallback(requests[row].token)
        result.encoded = [requests[r].token for r in sorted(encoded)]
        result.cached = [requests[r].token for r in sorted(cached)]
        result.missing = {requests[r].token: missing[r] for r in sorted(missing)}
        if result.missing:
            logger.warning("FVE: %d of %d item images missing or unreadable; wrote '%s' rows for: %s",
                           len(result.missing), len(requests), self.missing_image,
                           _shorten(f"{t} ({r})" for t, r in result.missing.items()))
        after = self.vision_cache.stats()
        result.vision = {k: after[k] - vision_before[k] for k in ("memory_hits", "disk_hits", "misses")}
        result.work = self.work_since(work_before)
        result.seconds = time.perf_counter() - start
        logger.info("FVE: %d items: %d encoded, %d from cache, %d missing images, %.1f s",
                    len(requests), len(result.encoded), len(result.cached), len(result.missing), result.seconds)
        return result

    def work_since(self, before):
        """Language-model passes and tokens, vision-tower passes and patches since ``before`` (a copy of
        ``self._work``), with the FLOP estimate: 2 x parameters x tokens (patches), attention not counted."""
        work = {k: self._work[k] - before.get(k, 0) for k in self._work}
        flops = 2 * (self.lm_params * work["lm_tokens"] + self.vision_params * work["vision_patches"])
        work["tflop"] = round(flops / 1e12, 6)
        return work

    # ------------------------------------------------------------------ internals
    def _fallback(self, token):
        if self.missing_image == "zero":
            return np.zeros(self.dim, dtype=np.float32)
        seed = int.from_bytes(hashlib.sha256(str(token).encode()).digest()[:8], "little")
        vec = np.random.default_rng(seed).normal(0.0, 0.02, self.dim)
        return (vec / np.linalg.norm(vec)).astype(np.float32)

    def _preprocess(self, job):
        """Pixel patches and grid of the job's image under the pixel budget, or set ``job.error``."""
        image = job.load_image()
        if isinstance(image, str):      # decode_image's failure reason
            job.error = image
            return
        try:
            job.pixels = self.turn.pixels(image)
        except (ValueError, OSError) as e:
            job.error = f"image processor rejected it: {e}"

    @torch.inference_mode()
    def _vision(self, jobs):
        """Vision features for ``jobs``: from the cache, else one vision-tower pass over every distinct
        image among them (the outputs go to the cache)."""
        todo = {}
        for job in jobs:
            job.vision = self.vision_cache.peek(job.vision_key)
            if job.vision is None and job.vision_key not in todo:
                todo[job.vision_key] = job
        if todo:
            outputs = self.vlm.family.vision_features(self.vlm, [j.pixels[0] for j in todo.values()],
                                                      [j.pixels[1] for j in todo.values()])
            self._work["vision_passes"] += len(todo)
            self._work["vision_patches"] += sum(self.vlm.family.vision_patches(self.vlm, j.pixels[1])
                                                for j in todo.values())
            fresh = {}
            for (key, job), (pooler, deepstack) in zip(todo.items(), outputs):
                fresh[key] = VisionFeatures(pooler.cpu(), [level.cpu() for level in deepstack], job.pixels[1])
                self.vision_cache.put(key, fresh[key])
            for job in jobs:
                if job.vision is None:
                    job.vision = fresh[job.vision_key]
        for job in jobs:
            job.pixels = None

    def _lookup(self, chunk, pool):
        """Vision features from the cache, else start decoding + preprocessing the image (in the
        worker threads when there are any); returns the futures to wait for."""
        futures = []
        for job in chunk:
            job.vision = self.vision_cache.get(job.vision_key)
            if job.vision is None:
                if pool is None:
                    self._preprocess(job)
                else:
                    futures.append(pool.submit(self._preprocess, job))
        return futures

    def _run(self, jobs, on_done=None):
        """Fill ``job.vector`` (the embedding) or ``job.error`` for every job; ``on_done(job)`` is
        called as soon as a job is final.

        Jobs go in windows of ``SORT_WINDOW_BATCHES`` batches: while the model runs one window, the
        worker threads decode and preprocess the images of the next (PIL and numpy release the GIL),
        so the host keeps the GPU fed. Tokenisation stays on this thread (fast tokenizers are not
        safe to share between threads). Inside a window, sequences are sorted by length to keep
        padding small.
        """
        start = last_log = time.perf_counter()
        window = self.batch_size * SORT_WINDOW_BATCHES
        chunks = [jobs[lo:lo + window] for lo in range(0, len(jobs), window)]
        pool = ThreadPoolExecutor(self.preprocess_workers) if self.preprocess_workers > 0 and jobs else None
        done = 0
        try:
            pending = self._lookup(chunks[0], pool) if chunks else []
            for k, chunk in enumerate(chunks):
                for future in pending:
                    future.result()
                pending = self._lookup(chunks[k + 1], pool) if k + 1 < len(chunks) else []
                ready = []
                for job in chunk:
                    if job.error:
                        if on_done:
                            on_done(job)
                        continue
                    grid = job.vision.grid if job.vision is not None else job.pixels[1]
                    job.ids, job.positions = self.turn.token_ids(job.prompt, self.turn.n_image_tokens(grid))
                    ready.append(job)
                ready.sort(key=lambda j: len(j.ids))
                for b in range(0, len(ready), self.batch_size):
                    batch = ready[b:b + self.batch_size]
                    self._vision([j for j in batch if j.vision is None])
                    self._work["lm_passes"] += len(batch)
                    self._work["lm_tokens"] += sum(len(j.ids) for j in batch)
                    for job, vec in zip(batch, self._language(batch)):
                        job.vector, job.vision = vec, None
                        if on_done:
                            on_done(job)
                    done += len(batch)
                    now = time.perf_counter()
                    if now - last_log >= PROGRESS_EVERY_S:
                        logger.info("FVE: encoded %d/%d (%.1f items/s)", done, len(jobs), done / (now - start))
                        last_log = now
        finally:
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)

    @torch.inference_mode()
    def _language(self, batch):
        """One padded language-model forward; returns the pooled, L2-normalised float32 vectors."""
        device = self.vlm.device
        length = max(len(j.ids) for j in batch)
        ids = torch.full((len(batch), length), self.turn.pad_id, dtype=torch.long)
        mask = torch.zeros((len(batch), length), dtype=torch.long)
        offsets = []
        for r, job in enumerate(batch):
            off = length - len(job.ids) if self.padding_side == "left" else 0
            ids[r, off:off + len(job.ids)] = torch.tensor(job.ids)
            mask[r, off:off + len(job.ids)] = 1
            offsets.append(off)
        ids, mask = ids.to(device), mask.to(device)
        inputs = self.vlm.family.language_inputs(self.vlm, ids, mask, self.turn.image_id, [j.vision for j in batch])
        out = self.vlm.model.model(input_ids=ids, attention_mask=mask, **inputs,
                                   output_hidden_states=self.layer != self.vlm.num_layers, use_cache=False)
        hidden = out.last_hidden_state if self.layer == self.vlm.num_layers else out.hidden_states[self.layer]
        pooled = torch.stack([hidden[r, torch.tensor(job.positions, device=device) + off].float().mean(0)
                              for r, (job, off) in enumerate(zip(batch, offsets))])
        return torch.nn.functional.normalize(pooled, dim=-1).cpu().numpy()


def item_requests(items, records, dataset_dir):
    """:class:`ItemRequest` per item of ``items`` (``read_items`` output) with its prompt from
    ``records`` (prompt-file records); image paths are relative to ``dataset_dir``. Every item needs
    a prompt; prompts for unknown items are an error (a prompt file from another dataset)."""
    prompts = {r["item_id"]: r["prompt"] for r in records}
    known = {it.item_id for it in items}
    missing = [it.item_id for it in items if it.item_id not in prompts]
    extra = sorted(set(prompts) - known)
    if missing or extra:
        raise ValueError(f"prompts do not match the items: {len(missing)} items without a prompt "
                         f"({_shorten(missing)}), {len(extra)} prompts for unknown items ({_shorten(extra)})")
    return [ItemRequest(it.item_id, os.path.join(dataset_dir, it.image) if it.image else "", prompts[it.item_id])
            for it in items]


def save_encoding(result, encoder, feature_dir, name, metadata=None):
    """Write ``result`` as feature set ``name`` (e.g. ``fve/cycle_1``) with provenance: the encoder's
    settings (``encoder`` is the :class:`FVEEncoder` or its ``describe()`` dict), the encode summary
    (cache hits, missing images) and ``metadata``."""
    from recbole_reveal.data.feature_store import save_item_features

    description = encoder if isinstance(encoder, dict) else encoder.describe()
    meta = dict(description, **result.summary(), **(metadata or {}))
    return save_item_features(feature_dir, name, result.tokens, result.matrix, meta)
