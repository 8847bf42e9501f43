"""The original's transfer recipes as data (`--recipe NAME` of main_train_downstream.py; the bash drivers of the
same name pass it): plain Python, no torch, so the campaign's estimate reads the same values."""
from __future__ import annotations

from infra.flags import Recipe

COMMON = (("--data", "../data"), ("--data_number", "1"), ("--arch", "resnet50"), ("--seed", "1"),
          ("--image-size", "224"))
PGD_10_TRAIN = (("--train_eps", "8/255"), ("--train_step", "10"), ("--train_gamma", "2/255"))  # as the original
PGD_20_TEST = (("--test_eps", "8/255"), ("--test_step", "20"), ("--test_gamma", "2/255"))      # validation and test RA

STD = Recipe("std", "standard fine-tuning, with RA measured too (which the double-win criterion needs)", (
    ("--mode", "std"), *COMMON, ("--batch_size", "64"), ("--lr", "0.001"), ("--weight_decay", "5e-4"),
    ("--epochs", "150"), ("--decreasing_lr", "50,100"), ("--scheduler", "multistep"), ("--warmup", "0"),
    ("--eval_from", "0"), *PGD_20_TEST))
ADV_CIFAR = Recipe("adv_cifar", "PGD-10 adversarial fine-tuning on CIFAR-10/100, validation from epoch 45", (
    ("--mode", "adv"), *COMMON, ("--batch_size", "128"), ("--lr", "0.1"), ("--weight_decay", "5e-4"),
    ("--epochs", "100"), ("--decreasing_lr", "50,75"), ("--scheduler", "multistep"), ("--warmup", "0"),
    ("--eval_from", "45"), *PGD_10_TRAIN, *PGD_20_TEST))
# the original SVHN script lists --decreasing_lr 50,75 but its code anneals by cosine over the 80 epochs, as here
ADV_SVHN = Recipe("adv_svhn", "PGD-10 adversarial fine-tuning on SVHN, cosine lr, validation every epoch", (
    ("--mode", "adv"), ("--dataset", "svhn"), *COMMON, ("--batch_size", "128"), ("--lr", "0.01"),
    ("--weight_decay", "5e-4"), ("--epochs", "80"), ("--decreasing_lr", "50,75"), ("--scheduler", "cosine"),
    ("--warmup", "0"), ("--eval_from", "0"), *PGD_10_TRAIN, *PGD_20_TEST))
RECIPES = {r.name: r for r in (STD, ADV_CIFAR, ADV_SVHN)}
