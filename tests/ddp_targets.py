"""What the 2-process tests run on every rank (imported by the worker processes, so it lives in a module).

:func:`train_and_record` trains each requested run exactly as ``run_recbole_reveal`` does (the same
``prepare_run``, ``fit`` and ``evaluate``) and writes, per rank, what the tests compare across ranks:
the K applied at every optimizer step, every parameter after training, the metrics the rank computed.
"""

import os

import torch


def train_and_record(runs, out_dir, dataset="tiny", config_dict=None):
    """``runs``: ``{label: (model, overrides)}``. Writes ``<out_dir>/<label>-rank<r>.pt``; returns rank
    0's metrics per label."""
    from recbole_reveal.infra.collectives import global_rank
    from recbole_reveal.config import build_config
    from recbole_reveal.training import close_run_logs, prepare_run

    reported = {}
    for label, (model, overrides) in runs.items():
        config, (train_data, valid_data, test_data), model_obj, trainer = prepare_run(build_config(
            model, dataset, config_dict=dict(config_dict or {}, **overrides)))
        ks, coefficients = [], []

        def record_step(optimizer, args, kwargs, trainer=trainer, ks=ks, coefficients=coefficients):
            ks.append(getattr(trainer, "current_k", None))
            coefficients.append(dict(getattr(trainer, "current_coefficients", {})))

        trainer.optimizer.register_step_pre_hook(record_step)
        initial = {k: v.detach().clone() for k, v in model_obj.state_dict().items()}
        best_score, best_valid = trainer.fit(train_data, valid_data, saved=True, show_progress=False)
        trained = {k: v.detach().clone() for k, v in model_obj.state_dict().items()}   # before the best
        test = trainer.evaluate(test_data, load_best_model=True)        # checkpoint (rank 0's) is loaded
        record = {
            "k": ks, "coefficients": coefficients, "avl_epochs": list(getattr(trainer, "avl_history", [])),
            "state": trained, "best_state": {k: v.detach().clone() for k, v in model_obj.state_dict().items()},
            "initial": initial, "valid": dict(best_valid), "test": dict(test),
            "train_loss": dict(trainer.train_loss_dict), "world_size": config["world_size"],
            "stacked": getattr(trainer, "_stacked_ok", None), "checkpoint": trainer.saved_model_file,
            "rows_per_step": train_data.step,
        }
        torch.save(record, os.path.join(out_dir, f"{label}-rank{global_rank(config)}.pt"))
        reported[label] = {"valid": dict(best_valid), "test": dict(test)}
        close_run_logs()
    return reported


def uneven_avl_step(out_dir, dataset="tiny", config_dict=None, rows=(5, 27)):
    """One AVL step on batches of different sizes per rank (``rows[r]`` rows on rank r): writes
    ``uneven-rank<r>.pt`` with this rank's own ``(L_v, L_t)``, its rows, the balance state before the step
    and the K the step applied, so a test can recompute K from the ranks' losses."""
    from recbole_reveal.config import build_config
    from recbole_reveal.infra.collectives import global_rank
    from recbole_reveal.training import close_run_logs, prepare_run

    config, (train_data, _, _), _, trainer = prepare_run(build_config(
        "M3SRec_REVEAL", dataset, config_dict=dict(config_dict or {}, avl_alpha=1.0, avl_clamp=None)))
    rank = global_rank(config)
    batch = next(iter(train_data))
    interaction = batch[torch.arange(rows[rank])]
    state = {"steps": 3, "mean_loss_v": 2.0, "mean_loss_t": 1.0}
    trainer.balance.load_state_dict(state)
    local = trainer.unimodal_losses(interaction)
    trainer._avl_loss(interaction)
    torch.save({"rows": len(interaction), "local": local, "state": state, "k": trainer.current_k},
               os.path.join(out_dir, f"uneven-rank{rank}.pt"))
    close_run_logs()


def train_record_and_uneven_step(runs, out_dir, dataset="tiny", config_dict=None):
    """:func:`train_and_record`, then :func:`uneven_avl_step`, in one start of the worker processes."""
    reported = train_and_record(runs, out_dir, dataset, config_dict)
    uneven_avl_step(out_dir, dataset, config_dict)
    return reported
