"""The FVE refinement loop (paper Alg. 2): per cycle x, encode every item image under its current
prompt, train the backbone on those features, rank the validation users, and let the VLM critic
rewrite the prompts of the selected items for cycle x + 1.

Every finished stage is recorded in the run folder (``fve_run_dir``, default ``<feature_dir>/fve/run``)
with a fingerprint of the config (:mod:`~recbole_reveal.fve.loop.run_state`); calling :func:`run_fve` again
with the same config resumes at the first unfinished stage (a finished run loads its saved results and
runs nothing, not even the VLM load). The stages and their files: :mod:`~recbole_reveal.fve.loop.stages`.
See docs/fve.md ("The cycle loop").
"""

import logging
import os
import time
from contextlib import contextmanager

from recbole_reveal.fve.encoding.residency import place_vlm
from recbole_reveal.config import build_config
from recbole_reveal.fve.loop.context import FVEContext
from recbole_reveal.fve.loop.run_state import RunState, fingerprint_config, run_folders_locked
from recbole_reveal.fve.loop.stages import Critic, Encode, Feedback, Init, Train
from recbole_reveal.fve.loop.table import cycle_table, format_table
from recbole_reveal.infra.cost import format_cost, write_cost
from recbole_reveal.infra.errors import ConfigError, RevealUserError
from recbole_reveal.infra.files import write_json_atomic

logger = logging.getLogger(__name__)


def algorithm_2(x_max):
    """The stages of Alg. 2 in order, for ``x_max`` refinement cycles."""
    yield Init()                        # initialise Prompt_0 from item metadata and user reviews
    for x in range(x_max):              # while X < X_max
        yield Encode(x)                 # step 1: e^{v_X} <- VLM(p^v, Prompt_X)
        yield Train(x)                  # step 2: train f_MSR on (e^{v_X}, e^id, e^t), AVL in its trainer
        yield Feedback(x)               # step 3: Result_X <- f_MSR(...) on the validation users
        if x < x_max - 1:
            yield Critic(x)             # steps 4-5: Critic_X, then Prompt_(X+1)


def stage_names(n_cycles):
    """Stages of a run in order: ``init``, then ``cycle_<x>/<kind>`` (no critic after the last cycle)."""
    return [stage.name for stage in algorithm_2(n_cycles)]


def run_fve(model, dataset, config_file_list=None, config_dict=None, cmd_args=()):
    """Run the FVE loop (Alg. 2) for ``fve_cycles`` cycles; resumable (module docstring).

    Returns a dict: ``table`` (one row per finished cycle: ``cycle``, ``prompts_changed``,
    ``items_reencoded``, ``cache_hits``, ``missing_images``, ``critic`` counts, ``acceptance``,
    ``valid`` / ``test`` results, ``seconds`` per stage), ``executed`` (the stages run by this call),
    ``stopped_after`` (``fve_stop_after`` when it ended the call early, else None), ``run_dir``,
    ``feature_dir``, ``table_text``, ``cost``, ``cost_file``.
    """
    return run_fve_with_config(build_config(model, dataset, config_file_list, config_dict, cmd_args))


def run_fve_with_config(config):
    """:func:`run_fve` of a config built once by the caller (``build_config``; the command passes its own)."""
    ctx = FVEContext.build(config)
    x_max, stop_after = ctx.settings["fve_cycles"], ctx.settings["fve_stop_after"]
    plan = list(algorithm_2(x_max))
    if stop_after is not None and stop_after not in [s.name for s in plan]:
        raise ConfigError(f"fve_stop_after must be one of the stages {[s.name for s in plan]}; got {stop_after!r}")
    # one run at a time writes the run folder and <feature_dir>/fve: a second one stops, naming this one
    with run_folders_locked(ctx.run_dir, ctx.fve_dir), _run_log(os.path.join(ctx.run_dir, "fve.log")):
        run = RunState(ctx.run_dir, *fingerprint_config(ctx.config, ctx.settings))
        ctx.meter.start_memory()
        # a stage counts as finished only while its files exist unchanged (another run sharing this
        # feature_dir may have rewritten fve/cycle_<x> or the prompts): otherwise it and all later ones rerun
        run.forget_untrusted(plan, ctx)
        executed, stopped = [], None
        todo = _stages_to_run(plan, run, stop_after)
        current = "the check of the critic's server"
        try:
            _check_critic_server(ctx, todo)
            for stage in todo:
                current = f"stage {stage.name}"
                _execute(stage, ctx, run)
                executed.append(stage.name)
        except Exception as e:      # into fve.log as well: the console may be gone by the time it is read
            logger.error("FVE: %s failed: %s: %s", current, type(e).__name__, e,
                         exc_info=not isinstance(e, RevealUserError))
            raise
        if stop_after in executed:
            stopped = stop_after
            logger.info("FVE: stopping after %s (fve_stop_after); run again to resume", stop_after)
        if not executed:
            logger.info("FVE: every stage of %s is finished; nothing to run (results loaded)", ctx.run_dir)
        return _report(ctx, run, x_max, executed, stopped)


def _stages_to_run(plan, run, stop_after):
    """The unfinished stages of ``plan`` in order, up to and including ``stop_after`` when it is among them."""
    todo = []
    for stage in plan:
        if not run.done(stage.name):
            todo.append(stage)
            if stage.name == stop_after:
                break
    return todo


def _check_critic_server(ctx, todo):
    """Ask the critic's server (``fve_generation_backend: endpoint``) once, before any stage runs, when a
    critic stage is among ``todo``: a wrong address, key, scheme or model name then costs seconds, not
    the encoding and training of cycle 0 (docs/fve.md)."""
    if ctx.settings["fve_generation_backend"] == "endpoint" and any(s.kind == "critic" for s in todo):
        logger.info("FVE: critic server %s serves %s", ctx.settings["fve_generation_endpoint"], ctx.generator.model)


def _execute(stage, ctx, run):
    """Run one stage, timed and metered, and record it (with its files' hashes) as finished."""
    start = time.perf_counter()
    place_vlm(ctx, stage.name)          # off the GPU while the backbone runs (fve/residency.py)
    with ctx.meter.stage(stage.cost):
        record = stage.run(ctx, run)
    record["seconds"] = round(time.perf_counter() - start, 3)
    run.finish(stage.name, record, stage.artefacts(ctx))
    logger.info("FVE: stage %s finished in %.1f s", stage.name, record["seconds"])


def _report(ctx, run, x_max, executed, stopped):
    """The per-cycle table and the cost of this call: logged, written to the run folder and returned."""
    config = ctx.config
    table = cycle_table(run, x_max)
    text = format_table(table, config["valid_metric"])
    logger.info("FVE per-cycle table (%s):\n%s", ctx.run_dir, text)
    write_json_atomic(os.path.join(ctx.run_dir, "table.json"), table, sort_keys=True)
    cost = ctx.meter.report(device=config["device"], model=config["model"], dataset=config["dataset"],
                            seed=config["seed"], cycles=x_max, executed=len(executed))
    cost_file = write_cost(os.path.join(ctx.run_dir, "cost.json"), cost)
    logger.info("%s", format_cost(cost, title=f"FVE run cost, stages run by this call (also in {cost_file})"))
    return {"table": table, "table_text": text, "executed": executed, "stopped_after": stopped,
            "run_dir": ctx.run_dir, "feature_dir": ctx.feature_dir, "cost": cost, "cost_file": cost_file}


@contextmanager
def _run_log(path):
    """Append the FVE modules' INFO records (stage timings, critic counts, the table) to ``path``;
    RecBole's own log handlers are closed after each training, so the loop keeps a log of its own."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    fve_logger = logging.getLogger("recbole_reveal.fve")
    level = fve_logger.level
    fve_logger.addHandler(handler)
    fve_logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        fve_logger.removeHandler(handler)
        fve_logger.setLevel(level)
        handler.close()
