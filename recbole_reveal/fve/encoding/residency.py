"""Where FVE's VLM waits between the stages that use it (``fve_vlm_offload``).

The cycle loop uses the VLM for encoding (single-process) and for the critic; in between the backbone
trains and ranks on the same GPU. A 7B VLM holds 16.6 GB there, too much beside the backbone on the
24 GB cards the paper used. Before every stage the loop calls :func:`place_vlm`, which

* before a stage that needs the VLM in this process (``encode``, and ``critic`` with the transformers
  backend, when ``fve_num_processes`` is 1), puts it back on its device, or reloads it;
* before any other stage (``train``, ``feedback``, stages run by worker processes, which load their
  own copies, and a critic answered by an OpenAI-compatible endpoint) parks it by ``fve_vlm_offload``:

  ``auto`` (default)  ``cpu`` when the VLM is on a GPU, otherwise ``keep``
  ``cpu``             moved to host memory (its weights count in the host RSS meanwhile); moving it
                      back takes about a second per 16 GB
  ``free``            released; reloaded from ``vlm_path`` (an unchanged folder gives the same model
                      id, so every cache stays valid); a model that cannot be moved (4/8-bit) is freed
  ``keep``            stays where it is

The encoder, its chat turn and the critic's generator share one ``LoadedVLM``: only its ``model`` is moved or
released, so every holder sees the change; the in-memory vision-tower cache is kept in every mode.
"""

import gc
import logging

import torch

from recbole_reveal.infra.errors import ConfigError

logger = logging.getLogger(__name__)

OFFLOAD_MODES = ("auto", "cpu", "free", "keep")


def stage_needs_vlm(stage, settings):
    """Whether loop stage ``stage`` (``init`` or ``cycle_<x>/<kind>``) runs the VLM in this process: an
    ``encode``, or a ``critic`` with the transformers backend, when ``fve_num_processes`` is 1 (worker
    processes load their own copies)."""
    from recbole_reveal.fve.encoding.parallel import resolve_num_processes

    kind = stage.rsplit("/", 1)[-1]
    if kind == "critic" and settings.get("fve_generation_backend", "transformers") != "transformers":
        return False
    if kind not in ("encode", "critic"):
        return False
    return resolve_num_processes(settings["fve_num_processes"], settings["fve_device"]) == 1


def place_vlm(ctx, stage):
    """Before loop stage ``stage``: the run's VLM on its device if the stage needs it, else parked by
    ``fve_vlm_offload``. ``ctx`` is the loop's :class:`~recbole_reveal.fve.loop.context.FVEContext`; a run
    that has not loaded the VLM yet is left alone."""
    if ctx._encoder is None:
        return
    if stage_needs_vlm(stage, ctx.settings):
        restore_vlm(ctx._encoder.vlm, ctx.settings)
    else:
        park_vlm(ctx._encoder.vlm, ctx.settings.get("fve_vlm_offload", "auto"))


def park_vlm(vlm, mode="auto"):
    """Take the :class:`~recbole_reveal.fve.vlm.load.LoadedVLM`'s model off its device (``cpu``), release it
    (``free``: ``vlm.model`` becomes None) or leave it (``keep``). The ``LoadedVLM`` object itself, which
    the encoder, its chat turn and the critic's generator share, stays with its processor."""
    if mode not in OFFLOAD_MODES:
        raise ValueError(f"fve_vlm_offload must be one of {', '.join(OFFLOAD_MODES)}; got {mode!r}")
    if mode == "keep" or getattr(vlm, "_parked", None):
        return
    on_gpu = vlm.device.type == "cuda"
    if mode == "auto":
        if not on_gpu:
            return
        mode = "cpu"
    if mode == "cpu":
        if not on_gpu:
            return
        try:
            vlm.model.to("cpu")
        except (ValueError, RuntimeError) as e:      # e.g. bitsandbytes 4/8-bit weights cannot be moved
            logger.info("FVE: the VLM cannot be moved to the CPU (%s); releasing it instead", e)
        else:
            vlm._parked = "cpu"
            _release_gpu_memory()
            logger.info("FVE: VLM moved to host memory while the backbone runs")
            return
    vlm._parked = "free"
    vlm.model = None
    _release_gpu_memory()
    logger.info("FVE: VLM released while the backbone runs (reloaded from vlm_path when needed)")


def restore_vlm(vlm, settings):
    """Undo :func:`park_vlm`: the model back on its device, or reloaded as ``settings`` load it."""
    parked = getattr(vlm, "_parked", None)
    if parked == "cpu":
        vlm.model.to(vlm.device)
        logger.info("FVE: VLM moved back to %s", vlm.device)
    elif parked == "free":
        from recbole_reveal.fve.vlm.load import load_fve_vlm

        loaded = load_fve_vlm(settings)
        if loaded.model_id != vlm.model_id:
            raise ConfigError(f"the VLM folder {settings['vlm_path']} changed while this FVE run was going (model "
                              f"id {vlm.model_id} -> {loaded.model_id}); restore it, or start a new run "
                              "(another fve_run_dir), or set fve_vlm_offload: cpu so the loaded model is kept")
        vlm.model = loaded.model
    vlm._parked = None


def _release_gpu_memory():
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
