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
from recbole_reveal.infra.errors import ConfigError

BACKENDS = ("transformers", "endpoint")


def generation_settings(settings):
    """The generation keys of ``settings`` (an ``fve_*`` dict with defaults), validated."""
    s = {k: settings[k] for k in ("fve_generation_backend", "fve_generation_endpoint", "fve_generation_model",
                                  "fve_generation_api_key_env", "fve_generation_concurrency",
                                  "fve_generation_timeout", "fve_generation_retries", "fve_generation_guided_json")}
    if s["fve_generation_backend"] not in BACKENDS:
        raise ConfigError(f"fve_generation_backend must be one of {', '.join(BACKENDS)}; "
                          f"got {s['fve_generation_backend']!r}")
    endpoint = s["fve_generation_endpoint"]
    if s["fve_generation_backend"] == "endpoint":
        from recbole_reveal.fve.critic.generation.openai_http import check_endpoint_url

        if endpoint is None:
            raise ConfigError("fve_generation_backend: endpoint needs fve_generation_endpoint, the server's "
                              "OpenAI-compatible base URL such as http://127.0.0.1:8000/v1")
        check_endpoint_url(endpoint)
    elif s["fve_generation_guided_json"]:
        raise ConfigError("fve_generation_guided_json needs fve_generation_backend: endpoint (a server with "
                          "guided decoding such as vLLM or SGLang); transformers generate has none")
    for key, low in (("fve_generation_concurrency", 1), ("fve_generation_retries", 0)):
        if isinstance(s[key], bool) or not isinstance(s[key], int) or s[key] < low:
            raise ConfigError(f"{key} must be an integer >= {low}; got {s[key]!r}")
    t = s["fve_generation_timeout"]
    if isinstance(t, bool) or not isinstance(t, (int, float)) or t <= 0:
        raise ConfigError(f"fve_generation_timeout must be a positive number of seconds; got {t!r}")
    if not isinstance(s["fve_generation_guided_json"], bool):
        raise ConfigError(f"fve_generation_guided_json must be True or False; got {s['fve_generation_guided_json']!r}")
    env = s["fve_generation_api_key_env"]
    if env is not None and (not isinstance(env, str) or not env):
        raise ConfigError(f"fve_generation_api_key_env must name an environment variable or be ~; got {env!r}")
    if s["fve_generation_backend"] == "endpoint":
        from recbole_reveal.fve.critic.generation.endpoint import api_key_of

        api_key_of(env)                 # an unset variable: said now, not when the critic starts
    return s


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
