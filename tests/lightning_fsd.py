"""A tiny Lightning training run that logs FSD with ``self.log("val/fsd", metric)`` each validation epoch.

Imported by tests/test_lightning.py for the one-process run, and run as a script
(``python -m tests.lightning_fsd REAL OUT.json --devices 2``) for the 2-process CPU DDP run (gloo):
Lightning starts the second process itself by rerunning this command line.
"""

from __future__ import annotations

import argparse
import copy
import json

import lightning
import torch
import torch.nn.functional as F

from fsd.generators import seeded_latents
from fsd.torchmetrics import FrechetSegmentationDistance
from tests.conftest import ColorSegmenter

Z_DIM = 8
NUM_SAMPLES = 12  # even, so Lightning's DistributedSampler gives each of 2 ranks 6 samples and pads none
SEED = 3


class TinyGenerator(torch.nn.Module):
    """z (N, 8) -> (N, 3, 24, 20) images in [-1, 1]: a linear map to a 6 x 5 grid, upsampled."""

    z_dim = Z_DIM

    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(Z_DIM, 3 * 6 * 5)
        with torch.no_grad():
            weights = torch.Generator().manual_seed(0)
            self.linear.weight.copy_(torch.randn(self.linear.weight.shape, generator=weights))
            self.linear.bias.zero_()

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.linear(z).view(-1, 3, 6, 5)
        return torch.tanh(F.interpolate(x, size=(24, 20), mode="bilinear", align_corners=False))


class GeneratorModule(lightning.LightningModule):
    """Trains the generator toward a fixed target (the same step on every rank, whatever its batch),
    and logs FSD against the real images over the validation latents."""

    def __init__(self, real):
        super().__init__()
        self.generator = TinyGenerator()
        self.fsd = FrechetSegmentationDistance(ColorSegmenter(32), real=real, num_workers=0)
        self.snapshots: list[TinyGenerator] = []

    def training_step(self, batch, batch_idx):
        # The loss does not depend on the batch, so 1 process and 2 DDP processes train identically.
        linear = self.generator.linear
        return (linear.weight - 1.0).pow(2).mean() * 40 + (linear.bias - 0.5).pow(2).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.generator.parameters(), lr=1.0)

    def on_validation_epoch_start(self) -> None:
        self.snapshots.append(copy.deepcopy(self.generator).eval())

    def validation_step(self, batch, batch_idx):
        (z,) = batch
        self.fsd.update(self.generator(z), real=False)
        self.log("val/fsd", self.fsd)


class Record(lightning.Callback):
    """The value logged at the end of each validation epoch."""

    def __init__(self):
        self.values: list[float] = []

    def on_validation_end(self, trainer, pl_module) -> None:
        self.values.append(trainer.callback_metrics["val/fsd"].item())


def run(real, devices: int, root) -> tuple[list[float], GeneratorModule]:
    """Two epochs of two training steps each, a validation epoch after each; the logged FSD values."""
    torch.manual_seed(0)
    validation = torch.utils.data.TensorDataset(seeded_latents(NUM_SAMPLES, SEED, Z_DIM))
    training = torch.utils.data.TensorDataset(torch.zeros(8, 1))
    record = Record()
    trainer = lightning.Trainer(
        accelerator="cpu", devices=devices, strategy="ddp" if devices > 1 else "auto", max_epochs=2,
        limit_train_batches=2, num_sanity_val_steps=0, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, default_root_dir=root, callbacks=[record],
    )
    module = GeneratorModule(real)
    trainer.fit(module, torch.utils.data.DataLoader(training, batch_size=2),
                torch.utils.data.DataLoader(validation, batch_size=5))
    module.global_rank_seen = trainer.global_rank
    return record.values, module


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("real")
    parser.add_argument("out")
    parser.add_argument("--devices", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(1)
    values, module = run(args.real, args.devices, str(args.out) + ".lightning")
    if module.global_rank_seen == 0:
        with open(args.out, "w") as handle:
            json.dump(values, handle)
    # A gloo group left to interpreter exit can abort the process there ("terminate called without an
    # active exception", seen once in CI after fit had finished): end it before exit.
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
