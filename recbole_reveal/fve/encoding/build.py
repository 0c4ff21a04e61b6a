"""The FVE encoder the settings (``fve_*`` keys) describe, with its VLM and vision cache."""

from recbole_reveal.fve.encoding.cache.vision import VisionFeatureCache
from recbole_reveal.fve.encoding.encoder import FVEEncoder
from recbole_reveal.fve.vlm.load import load_fve_vlm


def build_fve_encoder(settings, vlm=None, vision_cache=None):
    """Load ``vlm_path`` (unless ``vlm`` is given) and build the encoder the settings describe."""
    if vlm is None:
        vlm = load_fve_vlm(settings)
    if vision_cache is None:
        vision_cache = VisionFeatureCache(max_bytes=settings["fve_vision_cache_mb"] * 2**20,
                                          directory=settings["fve_vision_cache_dir"],
                                          max_disk_bytes=settings["fve_vision_cache_disk_mb"] * 2**20)
    return FVEEncoder(vlm, pooling=settings["fve_pooling"], layer=settings["fve_layer"],
                      min_pixels=settings["fve_min_pixels"], max_pixels=settings["fve_max_pixels"],
                      batch_size=settings["fve_batch_size"], missing_image=settings["fve_missing_image"],
                      vision_cache=vision_cache, preprocess_workers=settings["fve_preprocess_workers"])
