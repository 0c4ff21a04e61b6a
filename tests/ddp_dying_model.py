"""A backbone whose rank 1 process dies in its second training step (as if killed), for the test that a
distributed run whose rank dies ends with a clear error instead of hanging."""

import os

import torch.distributed as dist

from recbole_reveal.model.sequential_recommender.m3srec import M3SRec


class DyingM3SRec(M3SRec):
    steps = 0

    def calculate_loss(self, interaction):
        DyingM3SRec.steps += 1
        if dist.is_initialized() and dist.get_rank() == 1 and DyingM3SRec.steps == 2:
            os._exit(7)
        return super().calculate_loss(interaction)
