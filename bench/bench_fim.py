"""Benchmark: building a FIM prompt from a 16 KB file must take under 1 ms.

`.venv/bin/python -m bench.bench_fim [--config qwen] [--size 16384] [--limit-ms 1.0]` prints the median and p99 time
of building the prompt (Tabby path: snippets + trimming) and of rewriting an OpenAI body (suffix folding),
and exits 1 when a median is over the limit.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable

from kodify_proxy import fim
from kodify_proxy.preprocess import PreprocessingConfig, load_shipped
from kodify_proxy.protocol import CompletionRequest, validate


def rewrite(body: dict[str, object], config: PreprocessingConfig) -> fim.FimRewrite | None:
    """What the lane does to an OpenAI completion: the typed request, then the FIM body."""
    return fim.rewrite_completion(validate(CompletionRequest, body), body, config)


FUNCTION = '''def compute_{n}(values: list[int], factor: float = 1.5) -> dict[str, float]:
    """Summarise values number {n}: Привет, 世界."""
    total = sum(v * factor for v in values)
    return {{"total": total, "mean": total / max(len(values), 1), "index": {n}}}


'''


def make_file(size: int) -> str:
    """Python source of about `size` characters."""
    parts: list[str] = []
    n = 0
    while sum(map(len, parts)) < size:
        parts.append(FUNCTION.format(n=n))
        n += 1
    return "".join(parts)[:size]


def measure(action: Callable[[], object], rounds: int) -> list[float]:
    """Per-call wall times in milliseconds."""
    for _ in range(50):
        action()
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        action()
        times.append((time.perf_counter() - start) * 1000)
    return times


def report(name: str, times: list[float]) -> float:
    """Print median and p99; return the median."""
    ordered = sorted(times)
    median = statistics.median(ordered)
    p99 = ordered[int(len(ordered) * 0.99) - 1]
    print(f"{name:<44} median {median * 1000:8.1f} us   p99 {p99 * 1000:8.1f} us   ({len(times)} runs)")
    return median


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", default="qwen")
    parser.add_argument("--size", type=int, default=16 * 1024)
    parser.add_argument("--rounds", type=int, default=2000)
    parser.add_argument("--limit-ms", type=float, default=1.0)
    args = parser.parse_args()
    config = load_shipped(args.config)
    text = make_file(args.size)
    cursor = len(text) // 2
    prefix, suffix = text[:cursor] + "    return ", text[cursor:]
    crlf_prefix, crlf_suffix = prefix.replace("\n", "\r\n"), suffix.replace("\n", "\r\n")
    snippets = tuple(fim.Snippet(f"src/mod{i}.py", FUNCTION.format(n=i)) for i in range(5))
    request = fim.FimInput(prefix, suffix, "python", snippets)
    crlf_request = fim.FimInput(crlf_prefix, crlf_suffix, "python", snippets)
    plain: dict[str, object] = {"model": "m", "prompt": prefix, "suffix": suffix}
    foreign: dict[str, object] = {"model": "m", "prompt": f"<fim_prefix>{prefix}<fim_suffix>{suffix}<fim_middle>"}
    print(f"file: {len(text.encode())} bytes, {len(text)} characters; config {args.config}")
    medians = [
        report("Tabby path: build_prompt (snippets)", measure(lambda: fim.build_prompt(request, config), args.rounds)),
        report(
            "Tabby path: build_prompt (CRLF file)", measure(lambda: fim.build_prompt(crlf_request, config), args.rounds)
        ),
        report("OpenAI path: rewrite_completion (suffix)", measure(lambda: rewrite(plain, config), args.rounds)),
        report("OpenAI path: rewrite_completion (StarCoder)", measure(lambda: rewrite(foreign, config), args.rounds)),
    ]
    if max(medians) >= args.limit_ms:
        print(f"FAIL: a median is over {args.limit_ms} ms", file=sys.stderr)
        return 1
    print(f"ok: every median is under {args.limit_ms} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
