"""The critic through any OpenAI-compatible chat endpoint (``fve_generation_backend: endpoint``): a local
vLLM or SGLang server with continuous batching, serving the same checkpoint as ``vlm_path``.

Standard library only (``urllib``). Per item one ``POST <fve_generation_endpoint>/chat/completions``:
one user turn with the instruction text, then the image as a base64 PNG data URL, resized on this side
to the run's pixel budget exactly as the Qwen image processor resizes it (so the server's processor
keeps it as it is); ``temperature: 0``, ``seed: fve_rewrite_seed``, ``max_tokens:
fve_rewrite_max_new_tokens``; ``finish_reason: length`` marks a cut answer. With
``fve_generation_guided_json`` the server is asked for a JSON object ``{"analysis", "new_prompt"}``
through ``response_format`` (json_schema; vLLM and SGLang constrain decoding to it).

``fve_generation_concurrency`` requests are in flight at once; each gets ``fve_generation_timeout``
seconds and up to ``fve_generation_retries`` retries with exponential backoff on a timeout, a refused or
dropped connection, an unreadable reply, HTTP 429 or 5xx. Other HTTP errors (a wrong model name, a bad
key) stop at once with the server's message. Items that still failed make the stage fail after every
other item is answered and logged, so a rerun asks only for those.
"""

import base64
import http.client
import io
import json
import logging
import os
import socket
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor, as_completed

from recbole_reveal.fve.critic.generation.base import Answer, user_turn
from recbole_reveal.fve.encoding.images import decode_image
from recbole_reveal.fve.vlm.folder import VLMFolder
from recbole_reveal.infra.errors import ConfigError, RevealUserError

logger = logging.getLogger(__name__)

PROGRESS_EVERY_S = 10.0
MAX_BACKOFF_S = 30.0
JSON_REPLY = ('\n\nReply with one JSON object and nothing else: {"analysis": "<your analysis>", '
              '"new_prompt": "<the improved prompt>"}.')
REWRITE_SCHEMA = {"type": "object", "additionalProperties": False, "required": ["analysis", "new_prompt"],
                  "properties": {"analysis": {"type": "string"}, "new_prompt": {"type": "string"}}}


class GenerationError(RevealUserError):
    """The endpoint could not answer (after retries); answers received so far are kept."""


class _Retryable(Exception):
    pass


class EndpointGenerator:
    """Critic answers from an OpenAI-compatible ``/chat/completions`` endpoint (module docstring)."""

    def __init__(self, base_url, model=None, api_key=None, concurrency=16, timeout=120.0, retries=4,
                 max_new_tokens=192, seed=0, min_pixels=3136, max_pixels=200704, factor=28, guided_json=False,
                 backoff=0.5):
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key
        self.concurrency, self.timeout, self.retries, self.backoff = int(concurrency), float(timeout), int(retries), backoff
        self.max_new_tokens, self.seed, self.guided_json = int(max_new_tokens), seed, bool(guided_json)
        self.min_pixels, self.max_pixels = int(min_pixels), int(max_pixels)
        self.factor = None if factor is None else int(factor)
        self.model = model or self.served_model()

    @classmethod
    def from_settings(cls, settings):
        env = settings["fve_generation_api_key_env"]
        key = None
        if env is not None:
            key = os.environ.get(env)
            if not key:
                raise ConfigError(f"fve_generation_api_key_env names the environment variable {env}, which is "
                                  "not set: export it with the server's API key, or set the key to ~")
        generator = cls(settings["fve_generation_endpoint"], settings["fve_generation_model"], key,
                        settings["fve_generation_concurrency"], settings["fve_generation_timeout"],
                        settings["fve_generation_retries"], settings["fve_rewrite_max_new_tokens"],
                        settings["fve_rewrite_seed"], settings["fve_min_pixels"],
                        settings["fve_max_pixels"] or 200704, _resize_factor(settings["vlm_path"]),
                        settings["fve_generation_guided_json"])
        family = VLMFolder(settings["vlm_path"] or "").family
        # the encoder refuses these in a prompt: the critic's parser rejects an answer holding them
        generator.reserved_tokens = tuple(family.control_tokens()) if family else ()
        return generator

    def identity(self):
        return {"backend": "endpoint", "model": self.model, "max_new_tokens": self.max_new_tokens, "seed": self.seed,
                "pixels": [self.min_pixels, self.max_pixels, self.factor], "guided_json": self.guided_json}

    # ---- HTTP ---------------------------------------------------------------------------------
    def _call(self, method, path, body=None):
        """One request; returns the parsed JSON reply. Retryable failures raise :class:`_Retryable`."""
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base_url + path, data=data, headers=headers, method=method)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as e:
            detail = e.read()[:300].decode(errors="replace")
            if e.code == 429 or e.code >= 500 or e.code == 408:
                raise _Retryable(f"HTTP {e.code}: {detail}") from e
            raise GenerationError(f"{self.base_url}{path}: HTTP {e.code}: {detail}") from e
        except (urllib.error.URLError, http.client.HTTPException, ConnectionError, socket.timeout, TimeoutError) as e:
            raise _Retryable(f"{type(e).__name__}: {getattr(e, 'reason', e)}") from e
        try:
            return json.loads(raw)
        except json.JSONDecodeError as e:
            raise _Retryable(f"unreadable reply: {raw[:120]!r}") from e

    def _with_retries(self, method, path, body=None):
        for attempt in range(self.retries + 1):
            try:
                return self._call(method, path, body)
            except _Retryable as e:
                if attempt == self.retries:
                    raise GenerationError(f"{self.base_url}{path}: {e} (after {self.retries} retries)") from e
                wait = min(self.backoff * 2 ** attempt, MAX_BACKOFF_S)
                logger.info("FVE endpoint: %s; retry %d/%d in %.1f s", e, attempt + 1, self.retries, wait)
                time.sleep(wait)

    def served_model(self):
        """The one model the server serves (``GET /models``), when ``fve_generation_model`` is not set."""
        models = [m.get("id") for m in self._with_retries("GET", "/models").get("data", [])]
        if len(models) != 1:
            raise ConfigError(f"fve_generation_model: the server at {self.base_url} serves {models}; "
                              "set fve_generation_model to the one to use")
        return models[0]

    # ---- answers ------------------------------------------------------------------------------
    def request_body(self, text, data_url):
        body = {"model": self.model, "messages": user_turn(text + (JSON_REPLY if self.guided_json else ""),
                                                           {"type": "image_url", "image_url": {"url": data_url}}),
                "max_tokens": self.max_new_tokens, "temperature": 0, "seed": self.seed, "n": 1}
        if self.guided_json:
            body["response_format"] = {"type": "json_schema",
                                       "json_schema": {"name": "prompt_rewrite", "schema": REWRITE_SCHEMA}}
        return body

    def answer(self, item):
        """The :class:`Answer` for one item (no request when its image is unusable)."""
        image = decode_image(item.image_path)
        if isinstance(image, str):
            return Answer("", False, error=image)
        reply = self._with_retries("POST", "/chat/completions", self.request_body(item.text, self.data_url(image)))
        try:
            choice = reply["choices"][0]
            text = choice["message"].get("content") or ""
        except (KeyError, IndexError, TypeError, AttributeError) as e:
            raise GenerationError(f"{self.base_url}: a reply without choices[0].message: {str(reply)[:200]}") from e
        return Answer(text, choice.get("finish_reason") != "length")

    def data_url(self, image):
        """The image as the Qwen processor would see it (resized into the pixel budget, sides multiples of
        patch x merge), as a base64 PNG data URL."""
        from PIL import Image
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

        if self.factor is None:          # Gemma-3 / InternVL: the server's processor resizes to its fixed tiles
            height, width = image.height, image.width
        else:
            height, width = smart_resize(image.height, image.width, self.factor, self.min_pixels, self.max_pixels)
        if (width, height) != image.size:
            image = image.resize((width, height), Image.BICUBIC)
        buf = io.BytesIO()
        image.save(buf, format="PNG")
        return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()

    def generate(self, items, done, log, keys, rank=0, world=1):
        """Answer every item not in ``done``, ``fve_generation_concurrency`` at a time, appending each
        answer to ``log`` as it arrives; raises :class:`GenerationError` for the items that failed."""
        todo = [item for item in items if item.index not in done]
        failed, start, last = [], time.perf_counter(), time.perf_counter()
        with ThreadPoolExecutor(self.concurrency) as pool:
            futures = {pool.submit(self.answer, item): item for item in todo}
            for n, future in enumerate(as_completed(futures), 1):
                item = futures[future]
                try:
                    log.append([(item, future.result())], keys)
                except GenerationError as e:
                    failed.append(f"{item.item_id}: {e}")
                now = time.perf_counter()
                if now - last >= PROGRESS_EVERY_S:
                    logger.info("FVE critic: %d/%d answers from %s (%.1f items/s)", n, len(todo), self.base_url,
                                n / (now - start))
                    last = now
        if failed:
            raise GenerationError(f"FVE critic: {len(failed)} of {len(todo)} requests to {self.base_url} failed; "
                                  f"the {len(todo) - len(failed)} answers received are kept and a rerun asks only "
                                  f"for the rest. First failures: {'; '.join(failed[:3])}")


def _resize_factor(vlm_path):
    """patch size x merge size of the checkpoint's image processor (28 for Qwen2.5-VL, 32 for Qwen3-VL); None
    for a family with fixed-size inputs (Gemma-3, InternVL), whose server-side processor does its own resizing."""
    folder = VLMFolder(vlm_path or "")
    if not str(folder.config.get("model_type", "qwen")).startswith("qwen"):
        return None
    cfg = folder.json_file("preprocessor_config.json")
    if cfg is None:
        return 28
    return int(cfg.get("patch_size", 14)) * int(cfg.get("merge_size", 2))
