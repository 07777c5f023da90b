"""Counting CLIP tokens exactly, with the base model's own tokenizer.

The prompt builder keeps prompts inside CLIP's 77-token window and the trainer's caption lint
warns about captions past it; both count through `clip_token_counter`.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

TokenCounter = Callable[[str], int]


def clip_token_counter(tokenizer: Any, *, special_tokens: bool = False) -> TokenCounter:
    """A counter of the tokens `tokenizer` (a CLIPTokenizer) makes of a text, never truncated.

    `special_tokens` counts the start and end tokens too (the window is 77 with them, 75
    without). The counter works on a private copy: a fast tokenizer keeps padding and
    truncation settings on its shared Rust backend, and the engine thread encodes padded
    batches with the pipeline's tokenizer while requests are planned on the event loop.
    """
    private = copy.deepcopy(tokenizer)

    def count(text: str) -> int:
        return len(private(text, add_special_tokens=special_tokens, truncation=False).input_ids)

    return count
