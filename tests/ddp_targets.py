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
    from recbole_reveal.distributed import global_rank
    from recbole_reveal.training import close_run_logs, prepare_run

    reported = {}
    for label, (model, overrides) in runs.items():
        config, (train_data, valid_data, test_data), model_obj, trainer = prepare_run(
            model, dataset, config_dict=dict(config_dict or {}, **overrides))
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
