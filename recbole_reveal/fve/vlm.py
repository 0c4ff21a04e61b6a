"""Load a local VLM folder for FVE (Qwen2.5-VL, Qwen3-VL, Gemma-3, InternVL3: the families of
:mod:`recbole_reveal.fve.families`), without torchvision.

* :func:`load_vlm` checks the folder (:func:`check_vlm_folder`: a clear error naming the missing
  files and the download command), loads the model with ``local_files_only=True`` (bf16 on GPU,
  fp32 on CPU) and builds the processor with :func:`build_processor`.
* The processor is assembled from its parts: the fast tokenizer, the PIL image processor and the
  folder's chat template, with no video processor. ``AutoProcessor`` cannot be used: for Qwen-VL and
  InternVL it insists on the video processor, which imports torchvision, and torchvision does not
  import beside torch 2.13 (nor do the non-PIL image processors). FVE only ever feeds still images.
* Tiny random, scripted and real-shape random models for tests and benchmarks live in
  :mod:`recbole_reveal.testing.vlms` (their old names here still resolve, on first use).
"""

import hashlib
import json
import logging
import os
from dataclasses import dataclass, field

import torch

from recbole_reveal.infra.errors import ConfigError, RevealUserError
from recbole_reveal.fve.families import (  # noqa: F401 (QWEN_SPECIAL_TOKENS, image_only_processor_class: re-exported)
    FAMILIES, NEAR_MISSES, QWEN_SPECIAL_TOKENS, image_only_processor_class,
)

logger = logging.getLogger(__name__)

# model_type in config.json -> (model class, processor class, a checkpoint to download)
SUPPORTED_MODELS = {t: (f.model_class, f.processor_class, f.checkpoints[0]) for t, f in FAMILIES.items()}

ATTN_IMPLEMENTATIONS = ("sdpa", "eager", "flash_attention_2", "auto")
QUANTIZATIONS = ("4bit", "8bit")
GPU_EXTRA = "pip install 'recbole-reveal[gpu]'"
SMALL_FILE_LIMIT = 64 * 2**20   # files up to this size are hashed whole for the model id
WEIGHT_SAMPLES, SAMPLE_BYTES = 16, 64 * 2**10


class VLMUnavailable(RevealUserError, FileNotFoundError):
    """The VLM folder is missing or incomplete; the message names what to download."""


@dataclass
class LoadedVLM:
    """A frozen VLM ready for FVE: model (eval mode), processor, and the ids FVE needs."""

    model: torch.nn.Module
    processor: object
    model_type: str
    model_id: str            # content hash of the folder (see vlm_model_id); part of every cache key
    path: str = None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    dtype: torch.dtype = torch.float32
    quantization: str = None     # None, "4bit" (NF4) or "8bit": bitsandbytes weights

    @property
    def family(self):
        """The :class:`~recbole_reveal.fve.families.Family` of this model (chat layout, image tokens)."""
        return FAMILIES[self.model_type]

    @property
    def tokenizer(self):
        return self.processor.tokenizer

    @property
    def image_processor(self):
        return self.processor.image_processor

    def token_id(self, token):
        tid = self.tokenizer.convert_tokens_to_ids(token)
        if tid is None or tid == self.tokenizer.unk_token_id and token != self.tokenizer.unk_token:
            raise ValueError(f"the VLM tokenizer has no token {token!r}")
        return tid

    @property
    def hidden_size(self):
        return int(self.model.config.text_config.hidden_size)

    @property
    def num_layers(self):
        return int(self.model.config.text_config.num_hidden_layers)

    def describe(self):
        out = {"vlm_path": self.path, "vlm_model_type": self.model_type, "vlm_model_id": self.model_id,
               "vlm_dtype": str(self.dtype).replace("torch.", ""), "vlm_hidden_size": self.hidden_size,
               "vlm_attn_implementation": getattr(self.model.config, "_attn_implementation", None)}
        if self.quantization:
            out["vlm_quantization"] = self.quantization
        return out


def _download_hint(path, model_type=None):
    repo = SUPPORTED_MODELS.get(model_type, SUPPORTED_MODELS["qwen2_5_vl"])[2]
    return (f"Download the whole model repository on a machine with internet, e.g. "
            f"`hf download {repo} --local-dir {path}` (or `huggingface-cli download {repo} "
            f"--local-dir {path}`), copy it here and set vlm_path to that folder. Any Qwen2.5-VL, "
            f"Qwen3-VL, Gemma-3 (4B and up) or InternVL3 (-hf) checkpoint works "
            f"({', '.join(v[2] for v in SUPPORTED_MODELS.values())}, ...).")


def _chat_template_of(path):
    """The folder's chat template: chat_template.jinja, chat_template.json, then tokenizer_config.json."""
    jinja = os.path.join(path, "chat_template.jinja")
    if os.path.isfile(jinja):
        with open(jinja, encoding="utf-8") as f:
            return f.read()
    for name in ("chat_template.json", "tokenizer_config.json"):
        p = os.path.join(path, name)
        if os.path.isfile(p):
            with open(p, encoding="utf-8") as f:
                template = json.load(f).get("chat_template")
            if isinstance(template, str) and template:
                return template
    return None


def _weight_files(path):
    """The weight files the folder needs (from the shard index when there is one), or None."""
    for index in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        p = os.path.join(path, index)
        if os.path.isfile(p):
            with open(p, encoding="utf-8") as f:
                return sorted(set(json.load(f)["weight_map"].values()))
    for single in ("model.safetensors", "pytorch_model.bin"):
        if os.path.isfile(os.path.join(path, single)):
            return [single]
    return None


def check_vlm_folder(path):
    """Check that ``path`` holds a complete supported VLM; returns its parsed config.json.

    Raises :class:`VLMUnavailable` listing every missing file (config, every weight shard, tokenizer,
    image-processor config, chat template) and the command to download the checkpoint.
    """
    if not path:
        raise VLMUnavailable("no VLM given: set vlm_path to a local Qwen2.5-VL, Qwen3-VL, Gemma-3 or InternVL3 folder. "
                             + _download_hint("/models/Qwen2.5-VL-7B-Instruct"))
    path = str(path)
    if not os.path.isdir(path):
        raise VLMUnavailable(f"vlm_path {path} is not a folder. " + _download_hint(path))
    cfg_path = os.path.join(path, "config.json")
    if not os.path.isfile(cfg_path):
        raise VLMUnavailable(f"vlm_path {path} is incomplete: missing config.json. " + _download_hint(path))
    with open(cfg_path, encoding="utf-8") as f:
        config = json.load(f)
    model_type = config.get("model_type")
    if model_type not in SUPPORTED_MODELS:
        why = f": {NEAR_MISSES[model_type]}" if model_type in NEAR_MISSES else ""
        raise VLMUnavailable(f"{cfg_path}: model_type {model_type!r} is not supported for FVE{why} "
                             f"(supported: {', '.join(SUPPORTED_MODELS)}). " + _download_hint(path))
    missing = []
    weights = _weight_files(path)
    if weights is None:
        missing.append("model.safetensors (or model.safetensors.index.json and its shards)")
    else:
        missing += [w for w in weights if not os.path.isfile(os.path.join(path, w))]
    if not (os.path.isfile(os.path.join(path, "tokenizer.json"))
            or all(os.path.isfile(os.path.join(path, n)) for n in ("vocab.json", "merges.txt"))):
        missing.append("tokenizer.json (or vocab.json + merges.txt)")
    if not os.path.isfile(os.path.join(path, "tokenizer_config.json")):
        missing.append("tokenizer_config.json")
    if not os.path.isfile(os.path.join(path, "preprocessor_config.json")):
        missing.append("preprocessor_config.json")
    if _chat_template_of(path) is None:
        missing.append("chat_template.json (or chat_template.jinja, or a chat_template in tokenizer_config.json)")
    if missing:
        raise VLMUnavailable(f"vlm_path {path} is incomplete: missing {'; '.join(missing)}. "
                             + _download_hint(path, model_type))
    return config


def vlm_model_id(path):
    """A content hash identifying the checkpoint, cheap even for 16 GB of weights.

    Every file up to 64 MiB (configs, tokenizer, chat template, small weights) is hashed whole; a
    larger file contributes its size and 16 evenly spaced 64 KiB samples, so re-downloaded or copied
    weights keep their id and different weights (another size, a fine-tune) get another one.
    """
    h = hashlib.sha256()
    for name in sorted(os.listdir(path)):
        p = os.path.join(path, name)
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


def _transformers_class(name):
    import transformers

    return getattr(transformers, name)


def build_processor(path, model_type=None):
    """The folder's processor (tokenizer + PIL image processor + chat template), no torchvision."""
    from transformers import AutoTokenizer

    path = str(path)
    config = check_vlm_folder(path)
    family = FAMILIES[model_type or config["model_type"]]
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    return family.processor(tokenizer, family.image_processor(path), _chat_template_of(path), config)


def resolve_device(device="auto"):
    """``auto`` = cuda when available, else cpu; a CUDA device that is not there is a ConfigError."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {device} requested (fve_device / --device) but CUDA is not available: this torch "
                          f"({torch.__version__}) is a CPU build or no GPU is visible; use cpu, or run on a GPU machine")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ConfigError(f"device {device} requested but only {torch.cuda.device_count()} GPU(s) are visible")
    return device


def resolve_dtype(dtype, device):
    """``auto``: bf16 on a GPU (the paper's compute dtype), fp32 on CPU (bf16 matmuls are slow there)."""
    if dtype in (None, "auto"):
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    names = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16,
             "float16": torch.float16, "fp32": torch.float32, "float32": torch.float32}
    if dtype not in names:
        raise ValueError(f"fve_dtype must be one of auto, {', '.join(names)}; got {dtype!r}")
    return names[dtype]


def _installed(module):
    import importlib.util

    return importlib.util.find_spec(module) is not None


def resolve_attn_implementation(value, device, dtype):
    """``fve_attn_implementation`` for transformers: ``sdpa`` (default), ``eager``, ``flash_attention_2``
    (CUDA, fp16/bf16, the flash-attn package) or ``auto`` (flash_attention_2 where it can run, else sdpa)."""
    if value is None:
        return None
    if value not in ATTN_IMPLEMENTATIONS:
        raise ConfigError(f"fve_attn_implementation must be one of {', '.join(ATTN_IMPLEMENTATIONS)}; got {value!r}")
    half = dtype in (torch.float16, torch.bfloat16)
    if value == "auto":
        return "flash_attention_2" if device.type == "cuda" and half and _installed("flash_attn") else "sdpa"
    if value == "flash_attention_2":
        if device.type != "cuda":
            raise ConfigError(f"fve_attn_implementation: flash_attention_2 runs on CUDA only; the VLM is on {device} "
                              "(use sdpa, or fve_device: cuda on a GPU machine)")
        if not half:
            raise ConfigError(f"fve_attn_implementation: flash_attention_2 needs fp16 or bf16; fve_dtype gives {dtype}")
        if not _installed("flash_attn"):
            raise ConfigError(f"fve_attn_implementation: flash_attention_2 needs the flash-attn package: {GPU_EXTRA}")
    return value


def quantization_config(quantization, device, dtype):
    """The transformers ``BitsAndBytesConfig`` of ``fve_quantization`` (None: full-precision weights):
    ``4bit`` = NF4 weights with ``dtype`` compute, as the reference code loads the VLM; ``8bit`` = LLM.int8."""
    if quantization is None:
        return None
    if quantization not in QUANTIZATIONS:
        raise ConfigError(f"fve_quantization must be one of {', '.join(QUANTIZATIONS)} or ~; got {quantization!r}")
    if device.type != "cuda":
        raise ConfigError(f"fve_quantization: {quantization} (bitsandbytes) runs on CUDA only; the VLM is on {device}")
    if not _installed("bitsandbytes"):
        raise ConfigError(f"fve_quantization: {quantization} needs the bitsandbytes package: {GPU_EXTRA}")
    from transformers import BitsAndBytesConfig

    if quantization == "4bit":
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype)
    return BitsAndBytesConfig(load_in_8bit=True)


def load_vlm(path, device="auto", dtype="auto", attn_implementation=None, quantization=None):
    """Load the VLM folder ``path`` (``local_files_only=True``) in eval mode with frozen weights;
    ``attn_implementation`` and ``quantization`` as :func:`resolve_attn_implementation` and
    :func:`quantization_config` describe."""
    device = resolve_device(device)
    dtype = resolve_dtype(dtype, device)
    attn_implementation = resolve_attn_implementation(attn_implementation, device, dtype)
    bnb = quantization_config(quantization, device, dtype)
    config = check_vlm_folder(path)
    model_type = config["model_type"]
    model_cls = _transformers_class(SUPPORTED_MODELS[model_type][0])
    # use_kernels=False: transformers >= 5.25 otherwise swaps layers for hub kernels on a GPU, which asks the
    # hub at load time (fails offline, and would run downloaded code)
    kwargs = {"local_files_only": True, "dtype": dtype, "use_kernels": False}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    if bnb is not None:
        kwargs["quantization_config"] = bnb
    if device.type == "cuda":
        kwargs["device_map"] = {"": str(device)}  # load straight onto the GPU
    model = model_cls.from_pretrained(str(path), **kwargs)
    if bnb is None:                               # bitsandbytes models are placed by device_map and cannot move
        model = model.to(device)
    model = model.eval().requires_grad_(False)
    processor = build_processor(path, model_type)
    if not FAMILIES[model_type].pixel_budget:
        logger.info("%s sees every image at its fixed input size: fve_min_pixels / fve_max_pixels do not apply",
                    model_type)
    vlm = LoadedVLM(model=model, processor=processor, model_type=model_type, model_id=vlm_model_id(path),
                    path=os.path.abspath(path), device=device, dtype=dtype, quantization=quantization)
    logger.info("loaded VLM %s (%s, id %s) on %s in %s%s, attention %s", path, model_type, vlm.model_id, device,
                dtype, f", {quantization} weights" if quantization else "",
                getattr(model.config, "_attn_implementation", None))
    return vlm


_MOVED_TO_SYNTHETIC = ("build_tiny_qwen2_5_vl", "build_tiny_qwen3_vl", "build_scripted_qwen2_5_vl", "random_qwen2_5_vl",
                       "real_shape_config", "build_scratch_tokenizer", "QWEN2_5_VL_CHAT_TEMPLATE",
                       "QWEN3_VL_CHAT_TEMPLATE", "REAL_SHAPES")


def __getattr__(name):
    """The test/benchmark model builders moved to :mod:`recbole_reveal.testing.vlms`; imports of
    their old names from here keep working without this module loading them."""
    if name in _MOVED_TO_SYNTHETIC:
        from recbole_reveal.testing import vlms as synthetic_vlms

        return getattr(synthetic_vlms, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
