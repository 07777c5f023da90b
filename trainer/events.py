"""Progress events of a training run, and the two listeners the trainer always attaches.

`train(config, on_event=...)` reports what happens as `on_event(kind, fields)`, with JSON-ready
`fields`:

| kind | fields | when |
|---|---|---|
| `start` | step, total_steps, batches_per_epoch | before the first step (step > 0 on resume) |
| `step` | step, loss, lr | after every optimizer step (loss: mean over accumulated batches) |
| `validation` | step, loss | held-out loss at step 0 and at every epoch end and the last step |
| `samples` | step, epoch, path | a sample grid PNG was written (same moments as validation) |
| `done` | step | the adapter files and `training.json` are written |

The CLI writes them as JSON lines (`covergen-train --events FILE`) and the studio draws its
charts from them. TensorBoard logging (`TensorBoardLog`) and the terminal progress bar
(`ProgressBar`) listen to the same events, so every consumer sees one stream.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from torch.utils.tensorboard import SummaryWriter
from tqdm.auto import tqdm

TrainEvents = Callable[[str, dict[str, Any]], None]


def no_events(kind: str, fields: dict[str, Any]) -> None:
    """The default hook: nothing listens."""


class TensorBoardLog:
    """`train/loss`, `train/lr`, `validation/loss` scalars and `samples` images under `log_dir`."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.writer: SummaryWriter | None = None

    def __call__(self, kind: str, fields: dict[str, Any]) -> None:
        if kind == "start":  # a resumed run drops events logged after its checkpoint
            step = fields["step"]
            self.writer = SummaryWriter(log_dir=str(self.log_dir), purge_step=step if step else None)
            return
        if self.writer is None:
            return
        if kind == "step":
            self.writer.add_scalar("train/loss", fields["loss"], fields["step"])
            self.writer.add_scalar("train/lr", fields["lr"], fields["step"])
        elif kind == "validation":
            self.writer.add_scalar("validation/loss", fields["loss"], fields["step"])
        elif kind == "samples":
            grid = np.asarray(Image.open(fields["path"]).convert("RGB"))  # [h, w, 3] uint8, lossless PNG
            self.writer.add_image("samples", grid, fields["step"], dataformats="HWC")

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


class ProgressBar:
    """A tqdm bar over optimizer steps with the latest loss and learning rate."""

    def __init__(self, *, enabled: bool) -> None:
        self.enabled = enabled
        self.bar: Any = None

    def __call__(self, kind: str, fields: dict[str, Any]) -> None:
        if kind == "start":
            self.bar = tqdm(
                total=fields["total_steps"], initial=fields["step"], desc="training", disable=not self.enabled
            )
        elif kind == "step" and self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{fields['loss']:.4f}", lr=f"{fields['lr']:.2e}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def broadcast(listeners: Sequence[TrainEvents]) -> TrainEvents:
    """One hook that hands each event to every listener, in order."""

    def emit(kind: str, fields: dict[str, Any]) -> None:
        for listener in listeners:
            listener(kind, fields)

    return emit
