"""Pure: the order the lane tries upstreams in (rendezvous hashing) and the keys that name one file or conversation."""

from __future__ import annotations

import random
from collections import Counter

from kodify_proxy.lane.routing import (
    PROMPT_KEY_CHARS,
    conversation_key,
    order_upstreams,
    prompt_key,
    score,
    tabby_key,
)

UPSTREAMS = ["http://a:8000", "http://b:8000", "http://c:8000"]


def test_the_order_is_fixed_by_the_key_alone() -> None:
    assert order_upstreams("alice\x00a.py", UPSTREAMS) == ["http://b:8000", "http://c:8000", "http://a:8000"]
    assert order_upstreams("bob\x00b.py", UPSTREAMS) == ["http://a:8000", "http://b:8000", "http://c:8000"]
    assert order_upstreams("k3", UPSTREAMS) == ["http://a:8000", "http://c:8000", "http://b:8000"]
    assert order_upstreams("k3", list(reversed(UPSTREAMS))) == order_upstreams("k3", UPSTREAMS)  # not by position
    assert score("k3", "http://a:8000") == score("k3", "http://a:8000")  # stable across calls and processes


def test_an_upstream_that_leaves_moves_only_its_own_keys() -> None:
    keys = [f"user\x00file{i}.py" for i in range(300)]
    before = {key: order_upstreams(key, UPSTREAMS)[0] for key in keys}
    after = {key: order_upstreams(key, UPSTREAMS[:2])[0] for key in keys}
    moved = {key for key in keys if before[key] != after[key]}
    assert moved == {key for key in keys if before[key] == "http://c:8000"}
    # and the failover order of a key whose first choice left is its own next choice
    assert all(after[key] == order_upstreams(key, UPSTREAMS)[1] for key in moved)


def test_keys_spread_evenly() -> None:
    spread = Counter(order_upstreams(f"user\x00src/m{i}.py", UPSTREAMS)[0] for i in range(3000))
    assert set(spread) == set(UPSTREAMS) and min(spread.values()) > 900  # 1000 each, give or take


def test_without_a_key_the_order_is_shuffled() -> None:
    assert order_upstreams(None, UPSTREAMS, random.Random(1)) == ["http://b:8000", "http://c:8000", "http://a:8000"]
    assert len({tuple(order_upstreams(None, UPSTREAMS, random.Random(seed))) for seed in range(50)}) == 6
    assert order_upstreams(None, UPSTREAMS[:1]) == UPSTREAMS[:1]


def test_keys_of_a_file_a_prompt_and_a_conversation() -> None:
    assert tabby_key("alice", "src/a.py", "git@x:r.git") == "alice\x00git@x:r.git\x00src/a.py"
    assert tabby_key("alice", None, "git@x:r.git") is None
    long = "x" * (PROMPT_KEY_CHARS + 50)
    assert prompt_key("alice", long) == "alice\x00" + "x" * PROMPT_KEY_CHARS
    assert prompt_key("alice", [1, 2, 3]) == "alice\x001,2,3"
    assert prompt_key("alice", [[1, 2]]) is None
    first = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "q"}]
    later = [*first, {"role": "assistant", "content": "a"}, {"role": "user", "content": "more"}]
    assert conversation_key("alice", later) == conversation_key("alice", first)  # the turns keep their upstream
    assert conversation_key("alice", first) != conversation_key("bob", first)
    assert conversation_key("alice", first) == (
        'alice\x00chat\x00[{"content": "Be brief.", "role": "system"}, {"content": "q", "role": "user"}]'
    )
    assert conversation_key("alice", []) is None and conversation_key("alice", "hi") is None
