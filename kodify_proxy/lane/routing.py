"""Pure: the order in which to try upstreams for a request, so one file's keystrokes hit one vLLM's prefix cache.

Rendezvous (highest-random-weight) hashing: each (key, upstream) pair gets a stable score and the highest wins.
The same key lands on the same upstream while it is healthy; when it is not, only that upstream's keys move;
keys spread evenly. The hash is stable across processes, so several proxy replicas agree.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Sequence
from typing import Final

PROMPT_KEY_CHARS: Final = 256  # how much of an OpenAI prompt's start names "the same file"
PROMPT_KEY_TOKENS: Final = 64
CONVERSATION_KEY_MESSAGES: Final = 2  # a conversation's start: its system prompt and first question


def score(key: str, upstream: str) -> int:
    """The (key, upstream) pair's stable weight."""
    digest = hashlib.blake2b(f"{upstream}\x00{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def order_upstreams(key: str | None, upstreams: Sequence[str], rng: random.Random | None = None) -> list[str]:
    """`upstreams` in the order to try them: by affinity to `key`, or shuffled when there is no key."""
    if len(upstreams) < 2:
        return list(upstreams)
    if key is None:
        shuffled = list(upstreams)
        (rng or random).shuffle(shuffled)
        return shuffled
    return sorted(upstreams, key=lambda upstream: score(key, upstream), reverse=True)


def tabby_key(user: str, filepath: str | None, git_url: str | None) -> str | None:
    """A Tabby request's key: the user and the file (None when the client names no file)."""
    if not filepath:
        return None
    return f"{user}\x00{git_url or ''}\x00{filepath}"


def prompt_key(user: str, prompt: object) -> str | None:
    """An OpenAI completion's key: the user and the start of the prompt (text, or token ids)."""
    if isinstance(prompt, str):
        return f"{user}\x00{prompt[:PROMPT_KEY_CHARS]}"
    if isinstance(prompt, list) and prompt and isinstance(prompt[0], int):
        return f"{user}\x00" + ",".join(str(token) for token in prompt[:PROMPT_KEY_TOKENS])
    return None


def conversation_key(user: str, messages: object) -> str | None:
    """A chat's key: the user and the start of the conversation, which stays the same as it grows, so every turn
    lands on the upstream whose prefix cache holds the turns before (None when there are no messages)."""
    if not isinstance(messages, list) or not messages:
        return None
    start = json.dumps(messages[:CONVERSATION_KEY_MESSAGES], sort_keys=True, default=str)
    return f"{user}\x00chat\x00{start[: PROMPT_KEY_CHARS * 4]}"
