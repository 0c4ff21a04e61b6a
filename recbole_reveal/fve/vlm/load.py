"""Load a local VLM folder for FVE (Qwen2.5-VL, Qwen3-VL, Gemma-3, InternVL3: the families of
:mod:`recbole_reveal.fve.vlm.families`), without torchvision.

* :func:`load_vlm` checks the folder (:meth:`~recbole_reveal.fve.vlm.folder.VLMFolder.check`: a clear
  error naming the missing files and the download command), loads the model with ``local_files_only=True`` (bf16 on GPU,
  fp32 on CPU) and builds the processor with :func:`build_processor`.
* The processor is assembled from its parts: the fast tokenizer, the PIL image processor and the
  folder's chat template, with no video processor. ``AutoProcessor`` cannot be used: for Qwen-VL and
  InternVL it insists on the video processor, which imports torchvision, and torchvision does not
  import beside torch 2.13 (nor do the non-PIL image processors). FVE only ever feeds still images.
* Tiny random, scripted and real-shape random models for tests and benchmarks live in
  :mod:`recbole_reveal.testing.vlms` (which imports this module, never the other way round).
"""

import logging
import os
from dataclasses import dataclass, field

import torch

from recbole_reveal.config_keys.schema import RANGES
from recbole_reveal.fve.vlm.families import FAMILIES
from recbole_reveal.fve.vlm.folder import check_vlm_folder
from recbole_reveal.infra.errors import ConfigError

logger = logging.getLogger(__name__)

ATTN_IMPLEMENTATIONS = RANGES["fve_attn_implementation"].choices     # the schema's choices, one list
QUANTIZATIONS = RANGES["fve_quantization"].choices
GPU_EXTRA = "pip install 'recbole-reveal[gpu]'"


@dataclass
class LoadedVLM:
    """A frozen VLM ready for FVE: model (eval mode), processor, and the ids FVE needs."""

    model: torch.nn.Module
    processor: object
    model_type: str
    model_id: str            # content hash of the folder (VLMFolder.model_id); part of every cache key
    path: str = None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    dtype: torch.dtype = torch.float32
    quantization: str = None     # None, "4bit" (NF4) or "8bit": bitsandbytes weights

    @property
    def family(self):
        """The :class:`~recbole_reveal.fve.vlm.families.Family` of this model (chat layout, image tokens)."""
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


def _transformers_class(name):
    import transformers

    return getattr(transformers, name)


def build_processor(folder):
    """The processor (tokenizer + PIL image processor + chat template) of a checked :class:`VLMFolder`,
    no torchvision."""
    from transformers import AutoTokenizer

    family = folder.family
    tokenizer = AutoTokenizer.from_pretrained(folder.path, local_files_only=True)
    return family.processor(tokenizer, family.image_processor(folder.path), folder.chat_template(), folder.config)


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
    folder = check_vlm_folder(path)
    model_type = folder.model_type
    model_cls = _transformers_class(folder.family.model_class)
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
    processor = build_processor(folder)
    if not folder.family.pixel_budget:
        logger.info("%s sees every image at its fixed input size: fve_min_pixels / fve_max_pixels do not apply",
                    model_type)
    vlm = LoadedVLM(model=model, processor=processor, model_type=model_type, model_id=folder.model_id,
                    path=os.path.abspath(path), device=device, dtype=dtype, quantization=quantization)
    logger.info("loaded VLM %s (%s, id %s) on %s in %s%s, attention %s", path, model_type, vlm.model_id, device,
                dtype, f", {quantization} weights" if quantization else "",
                getattr(model.config, "_attn_implementation", None))
    return vlm


def load_fve_vlm(settings):
    """Load ``vlm_path`` as the settings say (device, dtype, attention kernel, quantization)."""
    return load_vlm(settings["vlm_path"], device=settings["fve_device"], dtype=settings["fve_dtype"],
                    attn_implementation=settings["fve_attn_implementation"],
                    quantization=settings.get("fve_quantization"))
