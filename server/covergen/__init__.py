"""covergen: regional news covers from Stable Diffusion plus stacked regional LoRA adapters.

The public surface is small: `covergen.server.serve` runs the service, `covergen.client` calls it.
Everything else is internal and may change.
"""

from __future__ import annotations

__version__ = "0.1.0"
