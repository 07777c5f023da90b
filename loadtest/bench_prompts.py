"""Cost of reading titles: the full prompt builder (glossary -> landmarks -> CC-CEDICT, jieba
part of speech, OpenCC) against the same builder without the dictionary, in the same run (not
collected by pytest):

    .venv/bin/python loadtest/bench_prompts.py

Prints start-up (CC-CEDICT parse, jieba warm-up) with the resident-memory growth, then the
first and the repeated `build()` of every headline in tests/data/headlines.txt (first build:
the sense memo and OpenCC are cold for that title), as medians and p99 and the ratio to the
builder without it. CoverMaker memoises whole plans per request, so this is a cache miss of
that memo, not the cost of every cache hit.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from headline_score import load_headlines  # noqa: E402

from covergen.prompts import PromptBuilder  # noqa: E402
from covergen.styles import StyleLibrary  # noqa: E402
from covergen.titles.dictionary import Dictionary  # noqa: E402


def _rss_mib() -> float:
    return int(Path("/proc/self/statm").read_text().split()[1]) * 4096 / 2**20


def _builds(builder: PromptBuilder, library: StyleLibrary, titles: list[str]) -> list[float]:
    base, stack = library.get("default"), [library.get("jiangnan"), library.get("spring")]
    times = []
    for title in titles:
        started = time.perf_counter()
        builder.build(title, base, stack)
        times.append((time.perf_counter() - started) * 1000)
    return times


def _row(name: str, times: list[float], baseline: list[float]) -> str:
    median, p99 = statistics.median(times), sorted(times)[int(0.99 * (len(times) - 1))]
    ratio = median / statistics.median(baseline)
    return f"{name:<28} median {median:6.3f} ms   p99 {p99:6.3f} ms   x{ratio:4.1f} of no dictionary"


def main() -> None:
    styles = REPO / "styles"
    library = StyleLibrary.load(styles)
    titles = [headline.title for headline in load_headlines()]
    rss, started = _rss_mib(), time.perf_counter()
    Dictionary.bundled()
    print(f"CC-CEDICT parse: {(time.perf_counter() - started) * 1000:.0f} ms, +{_rss_mib() - rss:.0f} MiB resident")
    plain = PromptBuilder.load(styles / "glossary.yaml", reserved_words=library.trigger_words(), dictionary=False)
    rss, started = _rss_mib(), time.perf_counter()
    full = PromptBuilder.load(styles / "glossary.yaml", reserved_words=library.trigger_words())
    full.warm_up()
    print(f"full builder load + jieba warm-up: {(time.perf_counter() - started) * 1000:.0f} ms, +{_rss_mib() - rss:.0f} MiB")
    plain.warm_up()
    base_first, base_again = _builds(plain, library, titles), _builds(plain, library, titles)
    first, again = _builds(full, library, titles), _builds(full, library, titles)
    print(f"{len(titles)} headlines")
    print(_row("no dictionary, first build", base_first, base_first))
    print(_row("full, first build", first, base_first))
    print(_row("no dictionary, again", base_again, base_again))
    print(_row("full, again", again, base_again))


if __name__ == "__main__":
    main()
