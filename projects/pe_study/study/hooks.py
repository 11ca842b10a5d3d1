"""The study's one hook: the same batches for every row of a seed."""
import random

import numpy as np
from mmengine.hooks import Hook

from mmsape.registry import HOOKS


@HOOKS.register_module()
class PairedDataSeedHook(Hook):
    """Reseed Python's and numpy's generators right before training.

    The training batches (the sampler's order, given its own ``seed``) and their
    augmentation (mmcv's ``RandomFlip`` draws from numpy's global generator) must
    be the same for every row trained with one seed. The Runner seeds numpy when
    it starts, but building the model in between may draw from it, and how much
    depends on the position encoding; reseeding here makes the draws start from
    the same state whatever was built.

    Args:
        seed (int): The seed of the training run.
    """

    priority = 'VERY_LOW'  # after every other before_train hook

    def __init__(self, seed: int) -> None:
        self.seed = int(seed)

    def before_train(self, runner) -> None:
        random.seed(self.seed)
        np.random.seed(self.seed)
