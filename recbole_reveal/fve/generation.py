"""The critic's generation backends (``fve_generation_backend``) and the per-item answer log.

* ``transformers`` (:class:`TransformersGenerator`): the run's own VLM, greedy ``generate`` in batches of
  ``fve_rewrite_batch_size`` (``auto``: sized to the GPU, 4 on the CPU), images decoded per batch;
  with ``fve_num_processes`` > 1 the batches are shared among that many worker processes, as encoding is
  (:func:`recbole_reveal.fve.parallel.generate_data_parallel`).
* ``endpoint`` (:class:`~recbole_reveal.fve.endpoint.EndpointGenerator`): any OpenAI-compatible chat
  server, e.g. a local vLLM or SGLang serving the same checkpoint.

Both send one user turn per item: the instruction text, then the image (a common prefix that serving
engines can cache), decoded greedily (temperature 0) under a fixed seed.

Batches are fixed slices of the full item list, whoever runs them and whatever was done before, so the
answers of an item never depend on how a run was split or resumed. Every answer is appended to an
:class:`AnswerLog` as soon as its batch (or request) finishes: a killed critic stage resumes at the next
unanswered item with identical results.
"""

import hashlib
import json
import logging
import os
import threading
from dataclasses import asdict, dataclass

import torch

from recbole_reveal.infra.errors import ConfigError
from recbole_reveal.fve.images import decode_image
from recbole_reveal.fve.vlm import resolve_device

logger = logging.getLogger(__name__)

BACKENDS = ("transformers", "endpoint")
CPU_BATCH, MAX_AUTO_BATCH = 4, 32
PROMPT_TOKENS_ESTIMATE = 1024       # instruction + 256 image tokens at 448^2, with room to spare


@dataclass(frozen=True)
class GenerationItem:
    """One item to answer: its position in the critic's request list, its image and the instruction."""

    index: int
    item_id: str
    image_path: str
    text: str


@dataclass
class Answer:
    """A generated answer; ``finished``: it ended on its own (not at the token limit); ``error``: why no
    generation could run for the item (its image is unusable), else None."""

    text: str
    finished: bool
    error: str = None


def user_turn(text, image_part):
    """The critic's one user turn: the instruction first, then the image."""
    return [{"role": "user", "content": [{"type": "text", "text": text}, image_part]}]


def generation_settings(settings):
    """The generation keys of ``settings`` (an ``fve_*`` dict with defaults), validated."""
    s = {k: settings[k] for k in ("fve_generation_backend", "fve_generation_endpoint", "fve_generation_model",
                                  "fve_generation_api_key_env", "fve_generation_concurrency",
                                  "fve_generation_timeout", "fve_generation_retries", "fve_generation_guided_json")}
    if s["fve_generation_backend"] not in BACKENDS:
        raise ConfigError(f"fve_generation_backend must be one of {', '.join(BACKENDS)}; "
                          f"got {s['fve_generation_backend']!r}")
    endpoint = s["fve_generation_endpoint"]
    if s["fve_generation_backend"] == "endpoint":
        if not isinstance(endpoint, str) or not endpoint.startswith(("http://", "https://")):
            raise ConfigError("fve_generation_backend: endpoint needs fve_generation_endpoint, the server's "
                              f"OpenAI-compatible base URL such as http://127.0.0.1:8000/v1; got {endpoint!r}")
    elif s["fve_generation_guided_json"]:
        raise ConfigError("fve_generation_guided_json needs fve_generation_backend: endpoint (a server with "
                          "guided decoding such as vLLM or SGLang); transformers generate has none")
    for key, low in (("fve_generation_concurrency", 1), ("fve_generation_retries", 0)):
        if isinstance(s[key], bool) or not isinstance(s[key], int) or s[key] < low:
            raise ConfigError(f"{key} must be an integer >= {low}; got {s[key]!r}")
    t = s["fve_generation_timeout"]
    if isinstance(t, bool) or not isinstance(t, (int, float)) or t <= 0:
        raise ConfigError(f"fve_generation_timeout must be a positive number of seconds; got {t!r}")
    if not isinstance(s["fve_generation_guided_json"], bool):
        raise ConfigError(f"fve_generation_guided_json must be True or False; got {s['fve_generation_guided_json']!r}")
    env = s["fve_generation_api_key_env"]
    if env is not None and (not isinstance(env, str) or not env):
        raise ConfigError(f"fve_generation_api_key_env must name an environment variable or be ~; got {env!r}")
    return s


def build_generator(settings, load_vlm):
    """The backend ``settings`` choose; ``load_vlm()`` gives the run's VLM (called only if needed)."""
    if settings["fve_generation_backend"] == "endpoint":
        from recbole_reveal.fve.endpoint import EndpointGenerator

        return EndpointGenerator.from_settings(settings)
    from recbole_reveal.fve.parallel import ParallelGenerator, resolve_num_processes

    processes = resolve_num_processes(settings["fve_num_processes"], settings["fve_device"])
    if processes > 1:
        return ParallelGenerator(settings, processes)
    return TransformersGenerator.from_settings(settings, load_vlm())


def item_key(identity, item):
    """What an answer depends on: the backend's identity, the instruction, and the image file (path,
    size, modification time); an answer logged under another key is regenerated."""
    try:
        st = os.stat(item.image_path)
        stamp = f"{st.st_size}:{st.st_mtime_ns}"
    except OSError:
        stamp = "missing"
    blob = json.dumps([identity, item.text, item.image_path, stamp], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


class AnswerLog:
    """Answers per item as JSON lines in ``folder`` (``<writer>.jsonl``; parallel workers write one file
    each), appended and flushed to disk as they come; ``folder=None`` keeps them in memory only."""

    def __init__(self, folder=None, writer="answers"):
        self.folder, self.writer = folder, writer
        self._memory = []
        self._lock = threading.Lock()

    def append(self, results, keys):
        """Append ``[(item, Answer)]``; ``keys`` maps an item index to its :func:`item_key`."""
        lines = [json.dumps(dict(asdict(answer), index=item.index, item_id=item.item_id, key=keys[item.index]))
                 for item, answer in results]
        with self._lock:
            if self.folder is None:
                self._memory += lines
                return
            os.makedirs(self.folder, exist_ok=True)
            path = os.path.join(self.folder, f"{self.writer}.jsonl")
            with open(path, "a+b") as f:
                cut = False
                if f.seek(0, os.SEEK_END) > 0:
                    f.seek(-1, os.SEEK_END)
                    cut = f.read(1) != b"\n"
                # a line cut short by a kill stays alone on its line (and is ignored when read)
                f.write(("\n" if cut else "").encode() + "".join(line + "\n" for line in lines).encode())
                f.flush()
                os.fsync(f.fileno())

    def load(self, keys):
        """``{index: Answer}`` of the logged answers whose key matches ``keys`` (a line cut short by a
        kill, or logged for another request, is ignored)."""
        lines = list(self._memory)
        if self.folder is not None and os.path.isdir(self.folder):
            for name in sorted(os.listdir(self.folder)):
                if name.endswith(".jsonl"):
                    with open(os.path.join(self.folder, name), encoding="utf-8") as f:
                        lines += f.read().split("\n")
        answers = {}
        for line in lines:
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if keys.get(rec.get("index")) == rec.get("key"):
                answers[rec["index"]] = Answer(rec["text"], rec["finished"], rec.get("error"))
        return answers


def fixed_batches(items, batch_size):
    """The batches of ``items`` (in order), ``batch_size`` each: the same whoever runs them."""
    return [items[k:k + batch_size] for k in range(0, len(items), batch_size)]


def auto_batch_size(text_config, weights_bytes, device, max_new_tokens):
    """``fve_rewrite_batch_size: auto``: 4 on the CPU; on a GPU, :func:`batch_for_memory` of its memory."""
    device = resolve_device(device)
    if device.type != "cuda":
        return CPU_BATCH
    total = torch.cuda.get_device_properties(device).total_memory
    return batch_for_memory(total, text_config, weights_bytes, max_new_tokens)


def batch_for_memory(total_bytes, text_config, weights_bytes, max_new_tokens):
    """As many sequences (of about :data:`PROMPT_TOKENS_ESTIMATE` + ``max_new_tokens`` tokens) as fit, at
    4x their bf16 key/value cache for activations, into 90 % of ``total_bytes`` less the weights: capped
    at 32, rounded down to a power of two (the 7B model: 16 on a 24 GB card, 32 from 40 GB)."""
    heads = text_config["num_attention_heads"]
    head_dim = text_config.get("head_dim") or text_config["hidden_size"] // heads
    kv_per_token = 2 * text_config["num_hidden_layers"] * text_config.get("num_key_value_heads", heads) * head_dim * 2
    per_sequence = 4 * kv_per_token * (PROMPT_TOKENS_ESTIMATE + max_new_tokens)
    fit = int((0.9 * total_bytes - weights_bytes) // per_sequence)
    batch = 1
    while batch * 2 <= min(fit, MAX_AUTO_BATCH):
        batch *= 2
    return batch


def resolve_batch_size(settings, device=None):
    """``fve_rewrite_batch_size`` as an int (``auto`` from the VLM folder's config and weight files)."""
    value = settings["fve_rewrite_batch_size"]
    if value != "auto":
        return int(value)
    path = settings["vlm_path"]
    with open(os.path.join(path, "config.json"), encoding="utf-8") as f:
        config = json.load(f)
    weights = sum(os.path.getsize(os.path.join(path, n)) for n in os.listdir(path)
                  if n.endswith((".safetensors", ".bin")))
    if settings.get("fve_quantization") == "4bit":
        weights //= 4
    elif settings.get("fve_quantization") == "8bit":
        weights //= 2
    return auto_batch_size(config.get("text_config", config), weights,
                           device or resolve_device(settings["fve_device"]), settings["fve_rewrite_max_new_tokens"])


class TransformersGenerator:
    """Greedy, batched, left-padded ``generate`` with the loaded VLM (``LoadedVLM``)."""

    def __init__(self, vlm, max_new_tokens=192, batch_size=4, seed=0, min_pixels=None, max_pixels=None):
        self.vlm, self.max_new_tokens, self.batch_size, self.seed = vlm, int(max_new_tokens), int(batch_size), seed
        self.reserved_tokens = tuple(vlm.family.reserved_tokens(vlm.tokenizer))
        ip = vlm.image_processor
        low, high = vlm.family.default_budget(ip)
        self.size = {"shortest_edge": int(min_pixels or low), "longest_edge": int(max_pixels or high)}
        self.images_kwargs = vlm.family.images_kwargs(ip, self.size["shortest_edge"], self.size["longest_edge"])

    @classmethod
    def from_settings(cls, settings, vlm):
        return cls(vlm, settings["fve_rewrite_max_new_tokens"], resolve_batch_size(settings, vlm.device),
                   settings["fve_rewrite_seed"], settings["fve_min_pixels"], settings["fve_max_pixels"])

    def identity(self):
        """Everything the answers depend on besides the request (batch composition changes padding)."""
        return {"backend": "transformers", "model_id": self.vlm.model_id, "dtype": str(self.vlm.dtype),
                "max_new_tokens": self.max_new_tokens, "batch_size": self.batch_size, "seed": self.seed,
                "pixels": [self.size["shortest_edge"], self.size["longest_edge"]]}

    def generate(self, items, done, log, keys, rank=0, world=1):
        """Answer every item not in ``done`` (indices), appending each batch's answers to ``log``; with
        ``world`` > 1 this process runs the batches ``b`` with ``b % world == rank``."""
        batches = fixed_batches(list(items), self.batch_size)
        for b, batch in enumerate(batches):
            if b % world != rank or all(item.index in done for item in batch):
                continue
            results = self.answer_batch(batch)
            log.append([(item, a) for item, a in results if item.index not in done], keys)

    def answer_batch(self, batch):
        """``[(item, Answer)]`` for one batch: its images decoded now, unusable ones answered with the
        reason, the rest generated together."""
        images, todo, out = [], [], {}
        for item in batch:
            image = decode_image(item.image_path)
            if isinstance(image, str):
                out[item.index] = Answer("", False, error=image)
            else:
                images.append(image)
                todo.append(item)
        if todo:
            for item, (text, finished) in zip(todo, self.generate_texts(images, [i.text for i in todo])):
                out[item.index] = Answer(text, finished)
        return [(item, out[item.index]) for item in batch]

    @torch.inference_mode()
    def generate_texts(self, images, texts):
        """Greedy answers to one user turn [text, image] each, all in one ``generate`` call:
        ``[(answer, finished)]``, the answer decoded up to (excluding) the first end-of-turn token."""
        vlm, tok = self.vlm, self.vlm.tokenizer
        stop, pad = _stop_ids(vlm)
        side = tok.padding_side
        try:
            tok.padding_side = "left"
            chats = [vlm.processor.apply_chat_template(user_turn(t, {"type": "image"}), tokenize=False,
                                                       add_generation_prompt=True) for t in texts]
            # the chat template writes <bos> itself where the family has one (Gemma): the tokenizer adds none
            batch = vlm.processor(text=chats, images=[[image] for image in images], padding=True,
                                  return_tensors="pt", add_special_tokens=False,
                                  images_kwargs=self.images_kwargs).to(vlm.device)
            torch.manual_seed(self.seed)
            gen = vlm.model.generate(**batch, max_new_tokens=self.max_new_tokens, do_sample=False, num_beams=1,
                                     temperature=None, top_p=None, top_k=None, eos_token_id=stop, pad_token_id=pad)
        finally:
            tok.padding_side = side
        out = []
        for row in gen[:, batch["input_ids"].shape[1]:].tolist():
            cut = next((k for k, t in enumerate(row) if t in stop), None)
            out.append((tok.decode(row if cut is None else row[:cut], skip_special_tokens=False), cut is not None))
        return out


def _stop_ids(vlm):
    tok = vlm.tokenizer
    ids = vlm.model.generation_config.eos_token_id
    ids = set(ids if isinstance(ids, (list, tuple)) else [ids] if ids is not None else [])
    ids.add(vlm.token_id(vlm.family.turn_end))
    pad = tok.pad_token_id if tok.pad_token_id is not None else vlm.token_id("<|endoftext|>")
    return sorted(ids), pad
