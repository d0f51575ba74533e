"""What the IDE plugins say about their suggestions, counted one way for every plugin: which client sent an event,
and whether the event is a suggestion shown or accepted. The journal stores it, `kodify-proxy usage` and the HTML
report sum it, and `kodify_suggestions_total` counts it.

- Tabby (`POST /v1/events`): a `view` event is an autocompletion shown, a `select` one accepted (Tabby's own
  acceptance rate, select / view); `dismiss` is neither.
- Continue (`POST /v1/dev-data`, core/autocomplete/util/AutocompleteLoggingService.ts): one `autocomplete` event per
  suggestion shown, `accepted: true` when taken, `false` once 10 s passed without it. A suggestion superseded by its
  own continuation within that time sends no event, and counts as nothing.
- Continue's next edit (core/nextEdit/NextEditLoggingService.ts): one `nextEditOutcome` per edit shown; accepted,
  rejected (`accepted: false`) or `aborted: true` (taken away before the developer chose, e.g. typing on): an
  aborted one does not count as shown.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Final, Literal

Kind = Literal["autocomplete", "next_edit"]
TABBY: Final = "Tabby"
CONTINUE: Final = "Continue"
UNKNOWN_VERSION: Final = "Unknown"  # Continue's userAgent when it does not know the IDE (core/data/log.ts)
# The clients kodify_suggestions_total names; any other is `other`, so the label's values stay few.
METRIC_CLIENTS: Final = frozenset({"tabby", "continue", "kodify"})

_TABBY_AGENT = re.compile(r"\btabby-agent/(\S+)")
# Continue's userAgent: `${ide}/${ideVersion} (Continue/${extensionVersion})` (core/data/log.ts, addBaseValues); a
# plugin built on Continue may name itself there instead.
_EXTENSION = re.compile(r"\(([^()/\s]+)/([^()\s]*)\)")


@dataclass(frozen=True)
class Suggestion:
    """An event about one suggestion: what kind, and whether it counts as shown, accepted (and aborted)."""

    kind: Kind
    shown: bool
    accepted: bool
    aborted: bool | None = None

    def outcomes(self) -> tuple[str, ...]:
        """The `outcome` labels this event adds one to in kodify_suggestions_total."""
        counted = (("shown", self.shown), ("accepted", self.accepted), ("aborted", bool(self.aborted)))
        return tuple(outcome for outcome, counts in counted if counts)


@dataclass(frozen=True)
class Client:
    """The plugin that sent a request, and its version when it said."""

    name: str
    version: str | None = None

    @property
    def metric_label(self) -> str:
        """The plugin's name as kodify_suggestions_total's `client` label."""
        lowered = self.name.lower()
        return lowered if lowered in METRIC_CLIENTS else "other"


def tabby_suggestion(event_type: str) -> Suggestion | None:
    """A Tabby event as a suggestion: view (shown), select (accepted); dismiss is neither."""
    if event_type == "view":
        return Suggestion("autocomplete", shown=True, accepted=False)
    if event_type == "select":
        return Suggestion("autocomplete", shown=False, accepted=True)
    return None


def continue_suggestion(name: str, data: dict[str, Any]) -> Suggestion | None:
    """A Continue dev-data event as a suggestion (`autocomplete`, `nextEditOutcome`); None for any other event."""
    accepted = data.get("accepted") is True
    if name == "autocomplete":
        return Suggestion("autocomplete", shown=True, accepted=accepted)
    if name == "nextEditOutcome":
        aborted = data.get("aborted") is True
        return Suggestion("next_edit", shown=not aborted, accepted=accepted and not aborted, aborted=aborted)
    return None


def tabby_client(user_agent: str | None) -> Client:
    """A Tabby route's client: tabby-agent's version when its User-Agent names it (1.9 does; 1.5 sends `node`)."""
    found = _TABBY_AGENT.search(user_agent or "")
    return Client(TABBY, found.group(1) if found else None)


def continue_client(user_agent: object) -> Client:
    """A dev-data event's client, from its `userAgent` (`VSCode/1.96.0 (Continue/1.0.5)`); Continue when it says
    none."""
    found = _EXTENSION.search(user_agent) if isinstance(user_agent, str) else None
    if found is None:
        return Client(CONTINUE)
    version = found.group(2)
    return Client(found.group(1), version if version and version != UNKNOWN_VERSION else None)
