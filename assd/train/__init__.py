"""Training: prior matching, the MultiBox loss, the paper's recipes and the (distributed) training loop.

``train(TrainOptions(model="assd-mini", data="synthetic", out="runs/mini"))`` -> ``TrainResult``;
``assd train`` is the command-line shell over it. Multi-GPU and multi-node runs use ``torchrun``.
"""

from assd.train.loss import MultiBoxLoss, hard_negative_mask
from assd.train.matching import match_priors, pad_targets
from assd.train.options import TrainOptions, TrainResult
from assd.train.recipes import RECIPES, Recipe, default_recipe_name, get_recipe
from assd.train.trainer import train

__all__ = ["RECIPES", "MultiBoxLoss", "Recipe", "TrainOptions", "TrainResult", "default_recipe_name",
           "get_recipe", "hard_negative_mask", "match_priors", "pad_targets", "train"]
