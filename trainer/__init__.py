"""The offline LoRA trainer: turns a folder of captioned images into a style adapter.

Public surface: `covergen-train` / `covergen-label` (see `trainer.cli`, `trainer.label_cli`),
`trainer.config.load_config`, `trainer.train.train` and its `TrainResult`.
"""

from __future__ import annotations
