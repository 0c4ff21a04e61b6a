"""A local VLM folder (a Hugging Face model repository copied to disk), read without torch.

:class:`VLMFolder` reads the folder's ``config.json`` once and knows the model's family
(:mod:`recbole_reveal.fve.vlm.families`), its chat template, its weight files and its content id;
:meth:`VLMFolder.check` is the one check that a folder holds a complete supported VLM, and
:func:`download_hint` the one text that says how to get one. The config-key checks, the FVE loop (before
any stage is recorded) and :func:`~recbole_reveal.fve.vlm.load.load_vlm` all go through it.
"""

import hashlib
import json
import os
from functools import cached_property

from recbole_reveal.infra.errors import ConfigError
from recbole_reveal.fve.vlm.families import FAMILIES, NEAR_MISSES

DEFAULT_FOLDER = "/models/Qwen2.5-VL-7B-Instruct"
SMALL_FILE_LIMIT = 64 * 2**20   # files up to this size are hashed whole for the model id
WEIGHT_SAMPLES, SAMPLE_BYTES = 16, 64 * 2**10


class VLMUnavailable(ConfigError, FileNotFoundError):
    """The VLM folder is missing or incomplete; the message names what to download."""


def download_hint(path=DEFAULT_FOLDER, model_type=None):
    """How to get a checkpoint of ``model_type`` (default Qwen2.5-VL) into the folder ``path``."""
    repo = FAMILIES.get(model_type, FAMILIES["qwen2_5_vl"]).checkpoints[0]
    return (f"Download the whole model repository on a machine with internet, e.g. "
            f"`hf download {repo} --local-dir {path}` (or `huggingface-cli download {repo} "
            f"--local-dir {path}`), copy it here and set vlm_path to that folder. Any Qwen2.5-VL, "
            f"Qwen3-VL, Gemma-3 (4B and up) or InternVL3 (-hf) checkpoint works "
            f"({', '.join(f.checkpoints[0] for f in FAMILIES.values())}, ...).")


class VLMFolder:
    """The folder ``path``; its ``config.json`` is parsed on first use and kept."""

    def __init__(self, path):
        self.path = str(path)

    def file(self, name):
        return os.path.join(self.path, name)

    @cached_property
    def config(self):
        """The parsed ``config.json`` ({} when the folder has none or it cannot be read)."""
        try:
            with open(self.file("config.json"), encoding="utf-8") as f:
                config = json.load(f)
        except (OSError, ValueError):
            return {}
        return config if isinstance(config, dict) else {}

    @property
    def model_type(self):
        return self.config.get("model_type")

    @property
    def family(self):
        """The :class:`~recbole_reveal.fve.vlm.families.Family` of the folder's model, or None."""
        return FAMILIES.get(self.model_type)

    def json_file(self, name):
        """Another JSON file of the folder (e.g. ``preprocessor_config.json``), or None when absent."""
        if not os.path.isfile(self.file(name)):
            return None
        with open(self.file(name), encoding="utf-8") as f:
            return json.load(f)

    def chat_template(self):
        """The folder's chat template: chat_template.jinja, chat_template.json, then tokenizer_config.json."""
        if os.path.isfile(self.file("chat_template.jinja")):
            with open(self.file("chat_template.jinja"), encoding="utf-8") as f:
                return f.read()
        for name in ("chat_template.json", "tokenizer_config.json"):
            if os.path.isfile(self.file(name)):
                template = self.json_file(name).get("chat_template")
                if isinstance(template, str) and template:
                    return template
        return None

    def weight_files(self):
        """The weight files the folder needs (from the shard index when there is one), or None."""
        for index in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
            if os.path.isfile(self.file(index)):
                return sorted(set(self.json_file(index)["weight_map"].values()))
        for single in ("model.safetensors", "pytorch_model.bin"):
            if os.path.isfile(self.file(single)):
                return [single]
        return None

    def weight_bytes(self):
        """The size of the folder's weight files (``*.safetensors``, ``*.bin``) together."""
        return sum(os.path.getsize(self.file(n)) for n in os.listdir(self.path)
                   if n.endswith((".safetensors", ".bin")))

    def check(self, key="vlm_path"):
        """That the folder holds a complete supported VLM; returns ``self``.

        Raises :class:`VLMUnavailable` listing every missing file (config, every weight shard, tokenizer,
        image-processor config, chat template) and the command to download the checkpoint.
        """
        path = self.path
        if not os.path.isdir(path):
            raise VLMUnavailable(f"{key}={path}: no such folder, or it is not a folder. " + download_hint(path))
        if not os.path.isfile(self.file("config.json")):
            raise VLMUnavailable(f"{key}={path}: the folder has no config.json, so it is not a Hugging Face model "
                                 f"folder (incomplete: missing config.json). " + download_hint(path))
        if self.model_type not in FAMILIES:
            why = f": {NEAR_MISSES[self.model_type]}" if self.model_type in NEAR_MISSES else ""
            raise VLMUnavailable(f"{self.file('config.json')}: model_type {self.model_type!r} is not supported for "
                                 f"FVE{why} (supported: {', '.join(FAMILIES)}). " + download_hint(path))
        missing = []
        weights = self.weight_files()
        if weights is None:
            missing.append("model.safetensors (or model.safetensors.index.json and its shards)")
        else:
            missing += [w for w in weights if not os.path.isfile(self.file(w))]
        if not (os.path.isfile(self.file("tokenizer.json"))
                or all(os.path.isfile(self.file(n)) for n in ("vocab.json", "merges.txt"))):
            missing.append("tokenizer.json (or vocab.json + merges.txt)")
        for name in ("tokenizer_config.json", "preprocessor_config.json"):
            if not os.path.isfile(self.file(name)):
                missing.append(name)
        if self.chat_template() is None:
            missing.append("chat_template.json (or chat_template.jinja, or a chat_template in tokenizer_config.json)")
        if missing:
            raise VLMUnavailable(f"{key} {path} is incomplete: missing {'; '.join(missing)}. "
                                 + download_hint(path, self.model_type))
        damaged = self.weight_problems()
        if damaged:
            raise VLMUnavailable(f"{key} {path} has damaged weights: {'; '.join(damaged[:3])}. "
                                 + download_hint(path, self.model_type))
        return self

    def weight_problems(self):
        """Why the ``*.safetensors`` weights cannot load, from their headers and sizes alone (no tensor is
        read, so it costs milliseconds for any size): a file shorter or longer than its header says (an
        interrupted download), an unreadable header, a shard without a tensor its index puts there."""
        index = self.json_file("model.safetensors.index.json") if os.path.isfile(
            self.file("model.safetensors.index.json")) else {}
        expected = {}
        for tensor, shard in (index.get("weight_map") or {}).items():
            expected.setdefault(shard, set()).add(tensor)
        problems = []
        for name in sorted(set(expected) | {n for n in os.listdir(self.path) if n.endswith(".safetensors")}):
            if not os.path.isfile(self.file(name)):
                continue                        # named by check() as missing
            header, problem = _safetensors_header(self.file(name))
            lacking = sorted(expected.get(name, set()) - set(header or ()))
            if problem is None and lacking:
                problem = f"{name} lacks {len(lacking)} tensors its index puts there (e.g. {lacking[0]})"
            if problem:
                problems.append(problem)
        return problems

    @cached_property
    def model_id(self):
        """A content hash identifying the checkpoint, cheap even for 16 GB of weights.

        Every file up to 64 MiB (configs, tokenizer, chat template, small weights) is hashed whole; a
        larger file contributes its size and 16 evenly spaced 64 KiB samples, so re-downloaded or copied
        weights keep their id and different weights (another size, a fine-tune) get another one.
        """
        h = hashlib.sha256()
        for name in sorted(os.listdir(self.path)):
            p = self.file(name)
            if not os.path.isfile(p) or name.startswith("."):
                continue
            size = os.path.getsize(p)
            h.update(f"{name}\0{size}\0".encode())
            with open(p, "rb") as f:
                if size <= SMALL_FILE_LIMIT:
                    h.update(f.read())
                else:
                    for k in range(WEIGHT_SAMPLES):
                        f.seek((size - SAMPLE_BYTES) * k // (WEIGHT_SAMPLES - 1))
                        h.update(f.read(SAMPLE_BYTES))
        return h.hexdigest()[:20]


def _safetensors_header(path):
    """``(tensor names, None)``, or ``(None, why not)``: the header must parse and the file end exactly
    where its header's last tensor does."""
    name, size = os.path.basename(path), os.path.getsize(path)
    again = "an interrupted download? download it again"
    with open(path, "rb") as f:
        head = f.read(8)
        length = int.from_bytes(head, "little") if len(head) == 8 else None
        if length is None or length > size - 8:
            return None, f"{name}: {size} bytes, shorter than its safetensors header ({again})"
        try:
            header = json.loads(f.read(length))
            end = max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"), default=0)
        except (ValueError, KeyError, TypeError, IndexError, AttributeError) as e:
            return None, f"{name}: unreadable safetensors header ({type(e).__name__}; {again})"
    if size != 8 + length + end:
        cut = "truncated: " if size < 8 + length + end else ""
        return None, f"{name}: {size} bytes, but its header describes {8 + length + end} ({cut}{again})"
    return set(header) - {"__metadata__"}, None


def check_vlm_folder(path, key="vlm_path"):
    """The checked :class:`VLMFolder` of ``path`` (see :meth:`VLMFolder.check`); no path is an error
    saying what to set."""
    if not path or not isinstance(path, (str, os.PathLike)):
        raise VLMUnavailable(f"no VLM given: set {key} to a local Qwen2.5-VL, Qwen3-VL, Gemma-3 or InternVL3 "
                             f"folder (got {path!r}). " + download_hint())
    return VLMFolder(os.path.expanduser(str(path))).check(key)


def vlm_model_id(path):
    """:attr:`VLMFolder.model_id` of the folder ``path``."""
    return VLMFolder(path).model_id
