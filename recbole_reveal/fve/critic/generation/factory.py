"""The critic's generation backends (``fve_generation_backend``) and the per-item answer log.

* ``transformers`` (:class:`TransformersGenerator`): the run's own VLM, greedy ``generate`` in batches of
  ``fve_rewrite_batch_size`` (``auto``: sized to the GPU, 4 on the CPU), images decoded per batch;
  with ``fve_num_processes`` > 1 the batches are shared among that many worker processes, as encoding is
  (:class:`~recbole_reveal.fve.critic.generation.parallel.ParallelGenerator`).
* ``endpoint`` (:class:`~recbole_reveal.fve.critic.generation.endpoint.EndpointGenerator`): any OpenAI-compatible chat
  server, e.g. a local vLLM or SGLang serving the same checkpoint.

Both send one user turn per item: the instruction text, then the image (a common prefix that serving
engines can cache), decoded greedily (temperature 0) under a fixed seed.
"""

from recbole_reveal.fve.config import fve_settings

GENERATION_KEYS = ("fve_generation_backend", "fve_generation_endpoint", "fve_generation_model",
                   "fve_generation_api_key_env", "fve_generation_concurrency", "fve_generation_timeout",
                   "fve_generation_retries", "fve_generation_guided_json")


def generation_settings(settings):
    """The generation keys of ``settings`` (an ``fve_*`` dict with defaults), checked by the one pass."""
    return fve_settings(dict(settings), GENERATION_KEYS)


def build_generator(settings, load_vlm):
    """The backend ``settings`` choose; ``load_vlm()`` gives the run's VLM (called only if needed)."""
    if settings["fve_generation_backend"] == "endpoint":
        from recbole_reveal.fve.critic.generation.endpoint import EndpointGenerator

        return EndpointGenerator.from_settings(settings)
    from recbole_reveal.fve.critic.generation.parallel import ParallelGenerator
    from recbole_reveal.fve.critic.generation.transformers_backend import TransformersGenerator
    from recbole_reveal.fve.encoding.parallel import resolve_num_processes

    processes = resolve_num_processes(settings["fve_num_processes"], settings["fve_device"])
    if processes > 1:
        return ParallelGenerator(settings, processes)
    return TransformersGenerator.from_settings(settings, load_vlm())
