"""The transformers critic backend over ``fve_num_processes`` worker processes (one per GPU), launched as
FVE encoding's data-parallel workers are (:func:`recbole_reveal.fve.encoding.parallel.launch_workers`)."""

import logging
import os
import sys
from dataclasses import asdict

from recbole_reveal.fve.encoding.parallel import launch_workers, run_worker
from recbole_reveal.fve.vlm.folder import VLMFolder

logger = logging.getLogger(__name__)


class ParallelGenerator:
    """The transformers critic backend over ``num_processes`` worker processes (one per GPU, as encoding):
    the fixed batches of the item list are dealt round-robin to the workers, each loading the VLM and
    appending its answers to its own file of the answer log."""

    def __init__(self, settings, num_processes):
        from recbole_reveal.fve.critic.generation.transformers_backend import resolve_batch_size
        from recbole_reveal.fve.vlm.load import resolve_dtype, resolve_device

        self.settings, self.num_processes = settings, num_processes
        device = resolve_device("cpu" if str(settings["fve_device"]).startswith("cpu") else "cuda:0")
        self.batch_size = resolve_batch_size(settings, device)
        self.max_new_tokens = settings["fve_rewrite_max_new_tokens"]
        folder = VLMFolder(settings["vlm_path"])
        self.reserved_tokens = tuple(folder.family.control_tokens())
        ip_size = _preprocessor_size(settings["vlm_path"])
        self._identity = {"backend": "transformers", "model_id": folder.model_id,
                          "dtype": str(resolve_dtype(settings["fve_dtype"], device)),
                          "max_new_tokens": self.max_new_tokens, "batch_size": self.batch_size,
                          "seed": settings["fve_rewrite_seed"],
                          "pixels": [int(settings["fve_min_pixels"] or ip_size[0]),
                                     int(settings["fve_max_pixels"] or ip_size[1])]}

    def identity(self):
        """As the workers' :meth:`TransformersGenerator.identity` (checked by each worker)."""
        return self._identity

    def generate(self, items, done, log, keys):
        if log.folder is None:
            raise ValueError("the data-parallel critic needs an answer-log folder (run_critic's answers_dir)")
        work_dir = os.path.join(log.folder, "workers")
        logger.info("FVE critic: %d items with %d processes (%s)", len(items) - len(done), self.num_processes,
                    self.settings["fve_device"])
        launch_workers(work_dir, {"kind": "critic", "settings": dict(self.settings, fve_rewrite_batch_size=self.batch_size),
                                  "items": [asdict(i) for i in items], "done": sorted(done), "keys": keys,
                                  "identity": self._identity, "answers_dir": log.folder}, self.num_processes, __name__)


def _preprocessor_size(vlm_path):
    """The folder's default pixel budget, as its family reads it (what the workers' generator uses)."""
    family = VLMFolder(vlm_path).family
    return family.default_budget(family.image_processor(vlm_path))


def _critic_worker(job, settings, work_dir, rank, world):
    from recbole_reveal.fve.critic.generation.base import AnswerLog, GenerationItem
    from recbole_reveal.fve.critic.generation.transformers_backend import TransformersGenerator
    from recbole_reveal.fve.vlm.load import load_fve_vlm

    vlm = load_fve_vlm(settings)
    generator = TransformersGenerator.from_settings(settings, vlm)
    if generator.identity() != job["identity"]:
        raise RuntimeError(f"worker generator {generator.identity()} differs from the caller's {job['identity']}")
    keys = {int(k): v for k, v in job["keys"].items()}
    generator.generate([GenerationItem(**i) for i in job["items"]], set(job["done"]),
                       AnswerLog(job["answers_dir"], writer=f"answers_rank{rank}"), keys, rank=rank, world=world)


if __name__ == "__main__":
    run_worker(sys.argv[1], _critic_worker)
