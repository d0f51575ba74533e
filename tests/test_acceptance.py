"""kodify_proxy/acceptance.py: what counts as a suggestion shown or accepted for each plugin, and who the client is."""

from __future__ import annotations

from typing import Any

import pytest

from kodify_proxy.acceptance import (
    Client,
    Suggestion,
    continue_client,
    continue_suggestion,
    tabby_client,
    tabby_suggestion,
)


@pytest.mark.parametrize(
    ("event", "expected"),
    [
        ("view", Suggestion("autocomplete", shown=True, accepted=False)),
        ("select", Suggestion("autocomplete", shown=False, accepted=True)),
        ("dismiss", None),
    ],
)
def test_tabby_events(event: str, expected: Suggestion | None) -> None:
    assert tabby_suggestion(event) == expected


@pytest.mark.parametrize(
    ("name", "data", "expected"),
    [
        ("autocomplete", {"accepted": True}, Suggestion("autocomplete", True, True)),
        ("autocomplete", {"accepted": False}, Suggestion("autocomplete", True, False)),
        ("autocomplete", {}, Suggestion("autocomplete", True, False)),  # `accepted?` is optional in the schema
        ("autocomplete", {"accepted": "true"}, Suggestion("autocomplete", True, False)),  # only a real true counts
        ("nextEditOutcome", {"accepted": True, "aborted": False}, Suggestion("next_edit", True, True, False)),
        ("nextEditOutcome", {"accepted": False, "aborted": False}, Suggestion("next_edit", True, False, False)),
        ("nextEditOutcome", {"aborted": True}, Suggestion("next_edit", False, False, True)),
        ("nextEditOutcome", {"accepted": True, "aborted": True}, Suggestion("next_edit", False, False, True)),
        ("tokensGenerated", {"accepted": True}, None),
        ("editOutcome", {"accepted": True}, None),  # an edit the developer asked for, not a suggestion
        ("someFutureEvent", {"accepted": True}, None),
    ],
)
def test_continue_events(name: str, data: dict[str, Any], expected: Suggestion | None) -> None:
    assert continue_suggestion(name, data) == expected


@pytest.mark.parametrize(
    ("suggestion", "outcomes"),
    [
        (Suggestion("autocomplete", True, True), ("shown", "accepted")),
        (Suggestion("autocomplete", True, False), ("shown",)),
        (Suggestion("autocomplete", False, True), ("accepted",)),
        (Suggestion("next_edit", False, False, True), ("aborted",)),
    ],
)
def test_the_outcomes_a_suggestion_counts(suggestion: Suggestion, outcomes: tuple[str, ...]) -> None:
    assert suggestion.outcomes() == outcomes


@pytest.mark.parametrize(
    ("user_agent", "expected"),
    [
        ("VSCode/1.96.2 (Continue/1.0.5)", Client("Continue", "1.0.5")),
        ("JetBrains/2024.3 (Continue/1.0.12-jetbrains)", Client("Continue", "1.0.12-jetbrains")),
        ("Unknown/Unknown (Continue/Unknown)", Client("Continue")),  # log.ts without the IDE's info
        ("VSCode/1.96.2 (Kodify/0.4.1)", Client("Kodify", "0.4.1")),  # a plugin built on Continue naming itself
        ("", Client("Continue")),
        (None, Client("Continue")),
        (42, Client("Continue")),
    ],
)
def test_continue_client(user_agent: object, expected: Client) -> None:
    assert continue_client(user_agent) == expected


@pytest.mark.parametrize(
    ("user_agent", "expected"),
    [
        ("Node.js/v20.20.2 tabby-agent/1.9.0-dev probe-ide/0.1.0 probe-plugin/0.0.1", Client("Tabby", "1.9.0-dev")),
        ("node", Client("Tabby")),  # tabby-agent 1.5.0
        (None, Client("Tabby")),
    ],
)
def test_tabby_client(user_agent: str | None, expected: Client) -> None:
    assert tabby_client(user_agent) == expected


@pytest.mark.parametrize(
    ("name", "label"), [("Tabby", "tabby"), ("Continue", "continue"), ("Kodify", "kodify"), ("x" * 200, "other")]
)
def test_the_metric_label_of_a_client_is_one_of_a_few(name: str, label: str) -> None:
    assert Client(name).metric_label == label
