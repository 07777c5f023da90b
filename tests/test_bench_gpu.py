"""`loadtest/bench_gpu.py --dry-run`: the GPU benchmark's own code, on a CPU with the tiny model.

The GPU run cannot happen in `make test`, so the dry run keeps the script from rotting: every
section runs (compile says why it is skipped on a CPU) and every table carries its ratios.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the loadtest package

from loadtest import bench_gpu


def test_the_dry_run_prints_every_section_with_finite_ratios(capsys: pytest.CaptureFixture[str]) -> None:
    assert bench_gpu.main(["--dry-run"]) == 0
    out = capsys.readouterr().out
    for heading in ("## 1. engine vs plain diffusers", "## 2. mixed 8-stack", "## 3. COMPILE_UNET",
                    "## 4. LCM few-step", "## 5. step-level vs static"):  # fmt: skip
        assert heading in out
    assert "skipped: torch.compile is CUDA-only" in out
    ratio = re.search(r"step / static capacity: \*\*([0-9.]+)\*\*", out)
    assert ratio is not None and float(ratio.group(1)) > 0
    assert "| covergen Denoiser |" in out and "| 8 jobs, 8 stacks (mixed), hooks |" in out
