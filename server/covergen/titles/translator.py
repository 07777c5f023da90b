"""A local MarianMT translator for titles, when the user has one (`COVERGEN_TRANSLATOR`).

`MarianTranslator.load(folder)` reads a local MarianMT folder (for example a copy of
Helsinki-NLP/opus-mt-zh-en: config.json, model weights, source.spm, target.spm, vocab.json) with
`local_files_only=True`: nothing is ever downloaded. Titles are translated in batches (greedy,
at most `max_new_tokens`), on the same device policy as the base model ("auto": CUDA when
present, else CPU), and remembered per title (bounded, oldest first out).

`translate(titles)` waits at most `budget_s` for the model; a title that fails or is still being
translated when the budget runs out gets None, and the prompt builder falls back to the
dictionary path for it (the translation still lands in the memo for the next request).
The output is only text here: the prompt builder whitelists it like any other subject words.
"""

from __future__ import annotations

import concurrent.futures
import logging
import threading
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from covergen.errors import ConfigError

log = logging.getLogger(__name__)


class MarianTranslator:
    """Chinese titles -> English text through a local MarianMT model; shared by all requests."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        device: Any,
        *,
        budget_s: float = 0.25,
        max_new_tokens: int = 32,
        memo_size: int = 4096,
    ) -> None:
        self._model = model
        self._tokenizer = tokenizer
        self._device = device
        self.budget_s = budget_s
        self._max_new_tokens = max_new_tokens
        self._memo: OrderedDict[str, str] = OrderedDict()
        self._memo_size = memo_size
        self._memo_lock = threading.Lock()
        self.model_lock = threading.Lock()  # one generate() at a time on the model
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="translator")
        self.calls = 0  # generate() calls, for tests and logs

    @classmethod
    def load(cls, folder: Path, device: str = "auto", *, budget_s: float = 0.25) -> MarianTranslator:
        """The MarianMT model and tokenizer in `folder`, on `device` ("auto", "cpu", "cuda", ...)."""
        import torch
        from transformers import MarianMTModel, MarianTokenizer

        folder = Path(folder)
        if not (folder / "config.json").is_file():
            raise ConfigError(
                f"COVERGEN_TRANSLATOR={folder} is not a MarianMT folder (no config.json); point it at a "
                f"local copy of e.g. Helsinki-NLP/opus-mt-zh-en, or unset it to use the dictionary"
            )
        try:
            tokenizer = MarianTokenizer.from_pretrained(folder, local_files_only=True)
            model = MarianMTModel.from_pretrained(folder, local_files_only=True)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot load the translator in {folder}: {exc}") from exc
        resolved = (
            torch.device("cuda" if torch.cuda.is_available() else "cpu")
            if device == "auto"
            else torch.device(device)
        )
        model = model.to(resolved)  # type: ignore[arg-type]  # transformers types .to oddly
        model.eval()
        return cls(model, tokenizer, resolved, budget_s=budget_s)

    def translate(self, titles: Sequence[str]) -> list[str | None]:
        """English for each title (None: failed or over budget; use the dictionary)."""
        results: dict[str, str | None] = {}
        with self._memo_lock:
            for title in titles:
                if title in self._memo:
                    self._memo.move_to_end(title)
                    results[title] = self._memo[title]
        missing = list(dict.fromkeys(t for t in titles if t not in results))
        if missing:
            future = self._pool.submit(self._generate, missing)
            try:
                results.update(zip(missing, future.result(timeout=self.budget_s), strict=True))
            except concurrent.futures.TimeoutError:
                log.info(
                    "translator over its %.0f ms budget for %d title(s); dictionary used",
                    self.budget_s * 1000,
                    len(missing),
                )
            except Exception:  # a broken model must not fail the request: the dictionary path serves
                log.exception("translator failed for %d title(s); dictionary used", len(missing))
        return [results.get(title) for title in titles]

    def _generate(self, titles: list[str]) -> list[str]:
        import torch

        with self.model_lock, torch.inference_mode():
            self.calls += 1
            batch = self._tokenizer(
                titles, return_tensors="pt", padding=True, truncation=True, max_length=128
            )
            batch = {name: tensor.to(self._device) for name, tensor in batch.items()}
            generated = self._model.generate(
                **batch, max_new_tokens=self._max_new_tokens, num_beams=1, do_sample=False
            )  # [batch, tokens]
            texts: list[str] = self._tokenizer.batch_decode(generated, skip_special_tokens=True)
        with self._memo_lock:
            for title, text in zip(titles, texts, strict=True):
                self._memo[title] = text
                if len(self._memo) > self._memo_size:
                    self._memo.popitem(last=False)
        return texts

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
