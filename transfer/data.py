"""A transfer run's batches behind one interface, chosen once: `DeviceData` (uint8 images on the device, cropped
and resized there; transfer/pipeline.py) or `HostData` (torchvision's PIL transforms in DataLoader workers).
Both give `train_epoch(epoch)`, `val`, `test`, `fetch` (the test images for AutoAttack) and a `describe()`."""
from __future__ import annotations

from functools import partial

import torch

from datafiles import facts
from dataset import Splits
from infra.distributed import DistEnv
from infra.reproducibility import augment_seed
from training import runner
from transfer.config import TransferConfig
from transfer.pipeline import EVAL_TRANSFORMS, TRAIN_TRANSFORMS, DeviceBatches, uint8_tensors
from transfer.results import Fetch, dataset_items


class DeviceData:
    """The device pipeline of one run: the uint8 train/val/test images moved to `env.device` once, training
    batches in an order and with crops that are a pure function of (seed, epoch, rank), and evaluation
    batches sharded like ShardSampler (every image exactly once over the ranks)."""

    name = "device"

    def __init__(self, splits: Splits, cfg: TransferConfig, env: DistEnv, batch: int) -> None:
        self.splits, self.cfg, self.env = splits, cfg, env
        self.generator = torch.Generator(device=env.device)
        spec = facts.get(cfg.dataset)  # its transforms by name, refused before here where not in the pipeline's
        augment = TRAIN_TRANSFORMS[spec.train_transform](cfg.image_size, generator=self.generator,
                                                         channels_last=cfg.channels_last)
        shard = (env.rank, env.world_size)
        self.train = DeviceBatches(*self._tensors(splits.train), batch, transform=augment, shuffle=True,
                                   seed=cfg.seed, shard=shard)
        resize = EVAL_TRANSFORMS[spec.eval_transform](cfg.image_size, cfg.resize_size,
                                                      channels_last=cfg.channels_last)
        self.val = DeviceBatches(*self._tensors(splits.val), batch, transform=resize, shard=shard)
        self.test = DeviceBatches(*self._tensors(splits.test), batch, transform=resize, shard=shard)
        self.fetch: Fetch = self.test.batch

    def _tensors(self, split) -> tuple[torch.Tensor, torch.Tensor]:
        images, labels = uint8_tensors(split)
        return images.to(self.env.device), labels.to(self.env.device)

    def describe(self) -> str:
        return f"uint8 images on {self.env.device}, cropped, flipped and resized there"

    def train_epoch(self, epoch: int) -> DeviceBatches:
        """The training batches of `epoch`: its order, and its crop/flip generator re-seeded for it."""
        self.train.set_epoch(epoch)
        self.generator.manual_seed(augment_seed(self.cfg.seed, epoch, self.env.rank))
        return self.train


class HostData:
    """The PIL pipeline of one run: a fresh training DataLoader each epoch (order and worker seeds a pure
    function of (seed, epoch, rank)) and evaluation loaders sharded by ShardSampler."""

    name = "pil"

    def __init__(self, splits: Splits, cfg: TransferConfig, env: DistEnv, batch: int) -> None:
        self.splits, self.cfg, self.env, self.batch = splits, cfg, env, batch
        self.val = runner.eval_loader(splits.val, batch, env=env, workers=cfg.workers)
        self.test = runner.eval_loader(splits.test, batch, env=env, workers=cfg.workers)
        self.fetch: Fetch = partial(dataset_items, splits.test)

    def describe(self) -> str:
        return f"torchvision's PIL transforms in {self.cfg.workers} DataLoader worker(s) per process"

    def train_epoch(self, epoch: int):
        return runner.train_loader(self.splits.train, self.batch, seed=self.cfg.seed, epoch=epoch, env=self.env,
                                   workers=self.cfg.workers)


def run_data(pipeline: str, splits: Splits, cfg: TransferConfig, env: DistEnv, batch: int) -> DeviceData | HostData:
    """The run's data for its resolved pipeline ("device" or "pil")."""
    return (DeviceData if pipeline == "device" else HostData)(splits, cfg, env, batch)
