"""The critic through any OpenAI-compatible chat endpoint (``fve_generation_backend: endpoint``): a local
vLLM or SGLang server with continuous batching, serving the same checkpoint as ``vlm_path``.

The HTTP client is the official ``openai`` library (:mod:`~recbole_reveal.fve.openai_http`: its retries
and typed errors, plus a total time per request). Per item one ``chat.completions.create``: one user
turn with the instruction text, then the image as a base64 PNG data URL, resized on this side to the
run's pixel budget exactly as the Qwen image processor resizes it (so the server's processor keeps it as
it is); ``temperature: 0``, ``seed: fve_rewrite_seed``, ``max_tokens: fve_rewrite_max_new_tokens``;
``finish_reason: length`` marks a cut answer. With ``fve_generation_guided_json`` the server is asked
for a JSON object ``{"analysis", "new_prompt"}`` through ``response_format`` (json_schema; vLLM and
SGLang constrain decoding to it).

Ours is what the library does not know: ``fve_generation_concurrency`` requests in flight at once, the
answer log, and what counts as an answer. Building the generator asks ``GET /models`` once (the run's
pre-flight, before any stage is recorded): a wrong URL, key, model name or scheme stops the run there.
A request that still fails after ``fve_generation_retries`` retries (a timeout, a lost connection, HTTP
429 or 5xx) makes the stage fail after every other item is answered and logged, so a rerun asks only for
those; a refused key, an unknown model or route, a rejected request stop the stage at once (requests not
yet sent are never sent). A reply whose ``message.content`` is not text is logged as a rejected answer.
"""

import base64
import io
import json
import logging
import os
import threading
import time
from concurrent.futures import CancelledError, ThreadPoolExecutor, as_completed

import openai

from recbole_reveal.config_keys.schema import key_variable_problem
from recbole_reveal.fve.critic.generation.base import Answer, user_turn
from recbole_reveal.fve.critic.generation.openai_http import (
    EndpointError,
    check_endpoint_url,
    endpoint_error,
    failure,
    openai_client,
)
from recbole_reveal.fve.encoding.images import decode_image
from recbole_reveal.fve.vlm.folder import VLMFolder
from recbole_reveal.infra.errors import ConfigError, RevealUserError

logger = logging.getLogger(__name__)

PROGRESS_EVERY_S = 10.0
JSON_REPLY = ('\n\nReply with one JSON object and nothing else: {"analysis": "<your analysis>", '
              '"new_prompt": "<the improved prompt>"}.')
REWRITE_SCHEMA = {"type": "object", "additionalProperties": False, "required": ["analysis", "new_prompt"],
                  "properties": {"analysis": {"type": "string"}, "new_prompt": {"type": "string"}}}


class GenerationError(RevealUserError):
    """Some requests could not be answered (after retries); answers received so far are kept."""


def api_key_of(env):
    """The API key in the environment variable ``env`` (``fve_generation_api_key_env``; None: no key)."""
    problem = key_variable_problem("endpoint", env)
    if problem:
        raise ConfigError(problem)
    return None if env is None else os.environ[env]


def answer_text(content):
    """``(text, problem)`` of a reply's ``message.content``: a string as it is, None as "", a list of
    content parts as their texts joined; anything else is no answer (``problem`` says what it is)."""
    if content is None or isinstance(content, str):
        return content or "", None
    if isinstance(content, list) and all(isinstance(p, dict) and p.get("type") == "text"
                                         and isinstance(p.get("text"), str) for p in content):
        return "".join(p["text"] for p in content), None
    return "", f"message.content is {type(content).__name__} {json.dumps(content, default=str)[:80]}, not text"


class EndpointGenerator:
    """Critic answers from an OpenAI-compatible ``/chat/completions`` endpoint (module docstring)."""

    def __init__(self, base_url, model=None, api_key=None, concurrency=16, timeout=120.0, retries=4,
                 max_new_tokens=192, seed=0, min_pixels=3136, max_pixels=200704, factor=28, guided_json=False):
        self.base_url = check_endpoint_url(base_url)
        self.concurrency, self.timeout, self.retries = int(concurrency), float(timeout), int(retries)
        self.max_new_tokens, self.seed, self.guided_json = int(max_new_tokens), seed, bool(guided_json)
        self.min_pixels, self.max_pixels = int(min_pixels), int(max_pixels)
        self.factor = None if factor is None else int(factor)
        self.client = openai_client(self.base_url, api_key, self.timeout, self.retries, self.concurrency)
        self.model = self.check_model(model)
        self._stop = threading.Event()

    @classmethod
    def from_settings(cls, settings):
        generator = cls(settings["fve_generation_endpoint"], settings["fve_generation_model"],
                        api_key_of(settings["fve_generation_api_key_env"]),
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

    # ---- the pre-flight -----------------------------------------------------------------------
    def served_models(self):
        """The model names ``GET /models`` lists (retried as any request; a one-line error otherwise)."""
        what = "GET /models"
        try:
            reply = self.client.get("/models", cast_to=object)
        except openai.OpenAIError as e:
            raise endpoint_error(e, self.base_url, what) or EndpointError(
                f"{what} at {self.base_url}: {failure(e, self.timeout)} (after {self.retries} retries): is the server "
                "running there? (fve_generation_endpoint)") from None
        data = reply.get("data") if isinstance(reply, dict) else None
        if not isinstance(data, list) or not all(isinstance(m, dict) and isinstance(m.get("id"), str) for m in data):
            raise EndpointError(f"{what} at {self.base_url} replied {json.dumps(reply, default=str)[:160]}, not an "
                                "OpenAI model list ({\"data\": [{\"id\": ...}]}): is it an OpenAI-compatible server?")
        return [m["id"] for m in data]

    def check_model(self, model):
        """``model`` (``fve_generation_model``) if the server serves it, else the one model it serves."""
        served = self.served_models()
        if model is None:
            if len(served) != 1:
                raise ConfigError(f"fve_generation_model: the server at {self.base_url} serves {served}; "
                                  "set fve_generation_model to the one to use")
            return served[0]
        if model not in served:
            raise ConfigError(f"fve_generation_model is {model!r}, but the server at {self.base_url} serves {served}")
        return model

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
        """The :class:`Answer` for one item (no request when its image is unusable). Raises
        :class:`GenerationError` when the request failed after its retries, ``EndpointError`` when no
        request can succeed."""
        if self._stop.is_set():             # another request met an error no request escapes: send no more
            raise CancelledError
        image = decode_image(item.image_path)
        if isinstance(image, str):
            return Answer("", False, error=image)
        what = "POST /chat/completions"
        try:
            reply = self.client.chat.completions.create(**self.request_body(item.text, self.data_url(image)))
        except openai.OpenAIError as e:
            fatal = endpoint_error(e, self.base_url, what)
            if fatal is not None:
                self._stop.set()
                raise fatal from None
            raise GenerationError(f"{failure(e, self.timeout)} (after {self.retries} retries)") from None
        choices = getattr(reply, "choices", None)
        if not isinstance(choices, list) or not choices:
            raise GenerationError(f"{what}: a reply without choices: {str(reply)[:200]}")
        choice = choices[0]
        message = getattr(choice, "message", None)
        text, problem = answer_text(getattr(message, "content", None))
        return Answer(text, getattr(choice, "finish_reason", None) != "length", invalid=problem)

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
        answer to ``log`` as it arrives. Raises :class:`GenerationError` for the items that failed after
        their retries (once every other item is answered), or at once the error no request can escape."""
        todo = [item for item in items if item.index not in done]
        failed, fatal, answered = [], None, 0
        self._stop.clear()
        start = last = time.perf_counter()
        with ThreadPoolExecutor(self.concurrency) as pool:
            futures = {pool.submit(self.answer, item): item for item in todo}
            for future in as_completed(futures):
                item = futures[future]
                try:
                    log.append([(item, future.result())], keys)
                    answered += 1
                except CancelledError:
                    continue
                except GenerationError as e:
                    failed.append(f"{item.item_id}: {e}")
                except EndpointError as e:
                    fatal = fatal or e         # the requests not sent yet never are; answers in flight are kept
                now = time.perf_counter()
                if now - last >= PROGRESS_EVERY_S:
                    logger.info("FVE critic: %d/%d answered (%d failed) by %s, %.1f answers/s", answered, len(todo),
                                len(failed), self.base_url, answered / (now - start))
                    last = now
        if fatal is not None:
            raise EndpointError(f"FVE critic stopped: {fatal} ({len(done) + answered} answers received are kept; a "
                                "rerun asks only for the rest)")
        if failed:
            raise GenerationError(f"FVE critic: {len(failed)} of {len(todo)} requests to {self.base_url} failed; "
                                  f"the {answered} answers received are kept and a rerun asks only for the rest. "
                                  f"First failures: {'; '.join(failed[:3])}")


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
