"""The paper's ticket-finding recipes as data (`--recipe NAME` of main_imp_std.py / main_imp_adv.py; the bash
drivers of the same name pass it): plain Python, no torch, so the campaign's estimate reads the same values."""
from __future__ import annotations

from infra.flags import Recipe

# one node, one process per GPU (one CPU process without a GPU); the rendezvous chosen per run
LAUNCH = (("--dist-url", "auto"), ("--dist-backend", "nccl"), ("--multiprocessing-distributed", None),
          ("--world-size", "1"), ("--rank", "0"))
# ResNet-50 at 224 px on all the training images, 30 epochs per level at a constant lr, 20% of the surviving conv
# weights per level (sparsity 1-0.8^k), 19 levels, a global batch of 2048 over all GPUs
IMP_FLAGS = (("-a", "resnet50"), *LAUNCH, ("--wd", "1e-4"), ("--seed", "1"), ("--lr", "0.0005"), ("--rate", "0.2"),
             ("-b", "2048"), ("--prune_epoch", "30"), ("--epochs", "570"), ("--data_number", "1"),
             ("--image-size", "224"))
# L-inf PGD-3 in fractions of the [0, 1] pixel range, step 16/(3*255)
A_IMP_ATTACK = (("--train_eps", "8/255"), ("--train_step", "3"), ("--train_gamma", "16/765"))

IMP_STD = Recipe("imp_std", "IMP with standard training on ImageNet, the paper's", IMP_FLAGS)
IMP_ADV = Recipe("imp_adv", "A-IMP (PGD-3 adversarial training) on ImageNet, the paper's", IMP_FLAGS + A_IMP_ATTACK)
RECIPES = {r.name: r for r in (IMP_STD, IMP_ADV)}
