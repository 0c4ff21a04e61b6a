"""Loading a local Qwen-VL folder without torchvision: the tiny random folders go through the same
path as a real checkpoint (check, from_pretrained with local_files_only, processor from parts)."""

import json
import os
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from recbole_reveal.fve.vlm.families import FAMILIES
from recbole_reveal.fve.vlm.folder import VLMFolder, VLMUnavailable, check_vlm_folder, vlm_model_id
from recbole_reveal.fve.vlm.load import load_vlm
from recbole_reveal.infra.errors import RevealUserError
from recbole_reveal.testing.vlms import build_tiny_qwen2_5_vl, build_tiny_qwen3_vl

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IMAGE = os.path.join(ROOT, "dataset_atomic", "synthetic-demo", "images", "i0000.png")


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    return build_tiny_qwen2_5_vl(str(tmp_path_factory.mktemp("vlm") / "tiny-qwen2.5-vl"))


def test_tiny_folder_loads_as_the_real_classes(tiny_folder):
    from transformers import Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor, Qwen2Tokenizer

    vlm = load_vlm(tiny_folder, device="cpu")
    assert type(vlm.model) is Qwen2_5_VLForConditionalGeneration and not vlm.model.training
    assert isinstance(vlm.processor, Qwen2_5_VLProcessor) and vlm.processor.video_processor is None
    assert isinstance(vlm.tokenizer, Qwen2Tokenizer)
    assert vlm.dtype == torch.float32 and vlm.device.type == "cpu"
    assert not any(p.requires_grad for p in vlm.model.parameters())
    # the special tokens are the real strings and the config points at their ids
    cfg = vlm.model.config
    assert cfg.image_token_id == vlm.token_id("<|image_pad|>")
    assert cfg.vision_start_token_id == vlm.token_id("<|vision_start|>")
    assert cfg.text_config.hidden_size == 64 and cfg.text_config.num_hidden_layers == 2
    assert cfg.vision_config.depth == 2 and cfg.vision_config.hidden_size == 32
    assert sum(p.numel() for p in vlm.model.parameters()) < 1_000_000


def test_loaded_without_hub_kernels(tiny_folder):
    # transformers 5.25 kernelizes by default, which on a GPU resolves kernel repos on the hub at load time:
    # an offline GPU machine failed there (ConnectError, then "could not verify publisher trust status")
    assert load_vlm(tiny_folder, device="cpu").model.use_kernels is False


def test_processor_chat_template_and_generate_work_without_torchvision(tiny_folder):
    vlm = load_vlm(tiny_folder, device="cpu")
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe it."}]}]
    text = vlm.processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text == ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
                    "<|vision_start|><|image_pad|><|vision_end|>Describe it.<|im_end|>\n<|im_start|>assistant\n")
    image = Image.open(IMAGE).convert("RGB")
    batch = vlm.processor(text=[text], images=[image], return_tensors="pt")
    grid = batch["image_grid_thw"][0]
    assert int((batch["input_ids"] == vlm.model.config.image_token_id).sum()) == int(grid.prod()) // 4
    torch.manual_seed(0)
    out = vlm.model.generate(**batch, max_new_tokens=3, do_sample=False)
    assert out.shape[1] == batch["input_ids"].shape[1] + 3
    with pytest.raises(ImportError):
        import torchvision  # noqa: F401  (the reason the processor is built from parts)


def test_builder_is_deterministic_and_model_id_tracks_content(tiny_folder, tmp_path):
    again = build_tiny_qwen2_5_vl(str(tmp_path / "again"))
    assert vlm_model_id(again) == vlm_model_id(tiny_folder)
    other = build_tiny_qwen2_5_vl(str(tmp_path / "other"), seed=1)
    assert vlm_model_id(other) != vlm_model_id(tiny_folder)
    # a copied folder keeps its id: the id is content, not location
    copy = shutil.copytree(tiny_folder, str(tmp_path / "copy"))
    assert vlm_model_id(copy) == vlm_model_id(tiny_folder)


def _copy_without(src, dst, *names):
    shutil.copytree(src, dst)
    for n in names:
        os.remove(os.path.join(dst, n))
    return dst


def test_missing_or_incomplete_folder_is_a_clear_error(tiny_folder, tmp_path):
    with pytest.raises(VLMUnavailable, match=r"is not a folder.*hf download Qwen/Qwen2\.5-VL-7B-Instruct"):
        load_vlm(str(tmp_path / "nowhere"))
    with pytest.raises(VLMUnavailable, match="no VLM given: set vlm_path"):
        check_vlm_folder(None)
    folder = _copy_without(tiny_folder, str(tmp_path / "partial"), "preprocessor_config.json", "chat_template.json")
    with pytest.raises(VLMUnavailable) as err:
        load_vlm(folder)
    assert "missing preprocessor_config.json; chat_template.json" in str(err.value)
    assert f"--local-dir {folder}" in str(err.value)
    assert isinstance(err.value, RevealUserError)  # the CLI prints it as one line
    no_config = _copy_without(tiny_folder, str(tmp_path / "noconfig"), "config.json")
    with pytest.raises(VLMUnavailable, match="missing config.json"):
        check_vlm_folder(no_config)


def test_a_folder_reads_its_config_once_and_knows_its_family(tiny_folder, tmp_path):
    folder = VLMFolder(shutil.copytree(tiny_folder, str(tmp_path / "copy")))
    assert folder.check() is folder and folder.family is FAMILIES["qwen2_5_vl"]
    assert folder.model_id == vlm_model_id(tiny_folder)                     # a copy keeps its id
    os.remove(folder.file("config.json"))
    assert folder.model_type == "qwen2_5_vl" and folder.family is FAMILIES["qwen2_5_vl"]  # parsed once, kept
    with pytest.raises(VLMUnavailable, match="missing config.json"):
        VLMFolder(folder.path).check()                                      # a new object reads the folder again
    assert VLMFolder(str(tmp_path / "nowhere")).family is None


def test_missing_weight_shard_is_named(tiny_folder, tmp_path):
    folder = _copy_without(tiny_folder, str(tmp_path / "sharded"), "model.safetensors")
    index = {"metadata": {}, "weight_map": {"a": "model-00001-of-00002.safetensors",
                                            "b": "model-00002-of-00002.safetensors"}}
    with open(os.path.join(folder, "model.safetensors.index.json"), "w") as f:
        json.dump(index, f)
    shutil.copy(os.path.join(tiny_folder, "model.safetensors"),
                os.path.join(folder, "model-00001-of-00002.safetensors"))
    with pytest.raises(VLMUnavailable, match=r"missing model-00002-of-00002\.safetensors\."):
        check_vlm_folder(folder)


def test_unsupported_model_type_is_refused(tiny_folder, tmp_path):
    folder = shutil.copytree(tiny_folder, str(tmp_path / "llava"))
    cfg_path = os.path.join(folder, "config.json")
    cfg = json.load(open(cfg_path))
    cfg["model_type"] = "llava"
    json.dump(cfg, open(cfg_path, "w"))
    with pytest.raises(VLMUnavailable, match="model_type 'llava' is not supported"):
        check_vlm_folder(folder)


def test_qwen3_vl_folder_loads(tmp_path):
    from transformers import Qwen3VLForConditionalGeneration, Qwen3VLProcessor

    vlm = load_vlm(build_tiny_qwen3_vl(str(tmp_path / "tiny-qwen3-vl")), device="cpu")
    assert type(vlm.model) is Qwen3VLForConditionalGeneration and vlm.model_type == "qwen3_vl"
    assert isinstance(vlm.processor, Qwen3VLProcessor)
    assert vlm.image_processor.patch_size == 16


@pytest.mark.parametrize("shape,billions", [("3b", 3.75), ("7b", 8.29)])
def test_benchmark_shapes_match_the_released_checkpoints(shape, billions):
    """The random-weight benchmark models have the published parameter counts (meta device: no memory)."""
    from transformers import Qwen2_5_VLForConditionalGeneration

    from recbole_reveal.testing.vlms import real_shape_config

    with torch.device("meta"):
        model = Qwen2_5_VLForConditionalGeneration(real_shape_config(shape))
    assert round(sum(p.numel() for p in model.parameters()) / 1e9, 2) == billions
    assert model.config.vision_config.hidden_size == 1280 and model.config.vision_config.depth == 32


def test_random_model_in_bf16_encodes():
    """The GPU code path's dtype handling (weights built in bf16, pooling in fp32), on CPU."""
    from recbole_reveal.fve.encoding.encoder import FVEEncoder
    from recbole_reveal.testing.vlms import random_qwen2_5_vl

    vlm = random_qwen2_5_vl("tiny", device="cpu", dtype="bf16")
    assert {p.dtype for p in vlm.model.parameters()} == {torch.bfloat16}
    enc = FVEEncoder(vlm, min_pixels=56 * 56, max_pixels=112 * 112)
    image = Image.open(IMAGE)
    vectors = enc.embed([image, image], ["a red mug with dots", "a plain blue tent"])
    assert vectors.dtype == np.float32 and abs(float(np.linalg.norm(vectors[0])) - 1) < 1e-5
    assert enc.settings()["dtype"] == "bfloat16"


def test_gpu_only_load_options_fail_clearly_without_a_gpu(tiny_folder):
    """flash_attention_2 and 4/8-bit weights are CUDA features: on the CPU a ConfigError says so (and
    what to install) before anything loads; sdpa / eager / auto load."""
    from recbole_reveal.infra.errors import ConfigError

    for kwargs, match in (({"attn_implementation": "flash_attention_2"}, "flash_attention_2 runs on CUDA only"),
                          ({"quantization": "4bit"}, "4bit \\(bitsandbytes\\) runs on CUDA only"),
                          ({"quantization": "8bit"}, "8bit \\(bitsandbytes\\) runs on CUDA only"),
                          ({"quantization": "nf4"}, "fve_quantization must be one of 4bit, 8bit"),
                          ({"attn_implementation": "flash"}, "fve_attn_implementation must be one of")):
        with pytest.raises(ConfigError, match=match):
            load_vlm(tiny_folder, device="cpu", **kwargs)
    for attn, expected in (("sdpa", "sdpa"), ("eager", "eager"), ("auto", "sdpa")):
        vlm = load_vlm(tiny_folder, device="cpu", attn_implementation=attn)
        assert vlm.model.config._attn_implementation == expected
        assert vlm.describe()["vlm_attn_implementation"] == expected and "vlm_quantization" not in vlm.describe()


def test_cuda_requested_without_a_gpu_is_a_clear_error(tiny_folder):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    from recbole_reveal.fve.critic.generation.transformers_backend import auto_batch_size

    from recbole_reveal.infra.errors import ConfigError

    with pytest.raises(ConfigError, match="CUDA is not available"):
        load_vlm(tiny_folder, device="cuda")
    with pytest.raises(ConfigError, match="CUDA is not available"):
        auto_batch_size({"num_attention_heads": 4, "hidden_size": 64, "num_hidden_layers": 2}, 0, "cuda", 8)


def test_synthetic_models_live_outside_the_production_module():
    # issue 23: the library never imports recbole_reveal.testing, so no old name resolves through it
    import recbole_reveal.fve as fve
    import recbole_reveal.testing.vlms as synthetic
    import recbole_reveal.fve.vlm.load as vlm_module

    for name in ("build_tiny_qwen2_5_vl", "build_scripted_qwen2_5_vl", "random_qwen2_5_vl", "real_shape_config"):
        assert callable(getattr(synthetic, name))
        assert not hasattr(vlm_module, name)
        assert not hasattr(fve, name)


def test_damaged_weight_files_are_named_from_their_headers(tiny_folder, tmp_path):
    """Cut inside the tensors, inside the header, before the header's length; one byte too many; a shard
    without a tensor its index puts there: each named, before any weight is loaded."""
    folder = shutil.copytree(tiny_folder, str(tmp_path / "damaged"))
    weights = os.path.join(folder, "model.safetensors")
    whole = open(weights, "rb").read()
    for data, match in ((whole[:-1], rf"{len(whole) - 1} bytes, but its header describes {len(whole)} \(truncated"),
                        (whole[:100], "100 bytes, shorter than its safetensors header"),
                        (whole[:5], "5 bytes, shorter than its safetensors header"),
                        (whole + b"\0", rf"{len(whole) + 1} bytes, but its header describes {len(whole)} \(an")):
        with open(weights, "wb") as f:
            f.write(data)
        with pytest.raises(VLMUnavailable, match=r"damaged weights: model\.safetensors: " + match):
            check_vlm_folder(folder)
    with open(weights, "wb") as f:
        f.write(whole)
    check_vlm_folder(folder)
    with open(os.path.join(folder, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {}, "weight_map": {"model.visual.no_such.weight": "model.safetensors"}}, f)
    with pytest.raises(VLMUnavailable, match=r"model\.safetensors lacks 1 tensors its index puts there"):
        check_vlm_folder(folder)
