"""The LiteLLM callback's pure parts: which deployments a call (and its retry) may go to."""

from __future__ import annotations

from typing import Any

import pytest

from kodify_proxy.hooks import routable, tried_deployments


def deployment(upstream: str, model: str = "m") -> dict[str, Any]:
    return {"model_name": model, "model_info": {"id": f"{upstream}#{model}", "kodify_upstream": upstream}}


A, B = deployment("http://a"), deployment("http://b")


@pytest.mark.parametrize(
    ("healthy", "tried", "expected"),
    [
        ({"http://a", "http://b"}, set(), [A, B]),
        ({"http://b"}, set(), [B]),  # the monitor saw a down
        ({"http://a", "http://b"}, {"http://a#m"}, [B]),  # the retry goes elsewhere
        (set(), set(), [A, B]),  # nothing known healthy: LiteLLM tries, and its error reaches the client
        ({"http://a"}, {"http://a#m"}, [B]),  # tried and healthy loses to untried
        ({"http://a", "http://b"}, {"http://a#m", "http://b#m"}, [A, B]),  # never none while there were some
    ],
)
def test_routable(healthy: set[str], tried: set[str], expected: list[dict[str, Any]]) -> None:
    assert routable([A, B], healthy, tried) == expected


def test_tried_deployments_from_litellms_retry_breadcrumbs() -> None:
    kwargs = {"metadata": {"previous_models": [{"deployment_id": "http://a#m", "exception_type": "X"}, {"x": 1}]}}
    assert tried_deployments(kwargs) == {"http://a#m"}
    assert tried_deployments({"litellm_metadata": {"previous_models": [{"deployment_id": "d"}]}}) == {"d"}
    assert tried_deployments(None) == set() and tried_deployments({"metadata": {"previous_models": "?"}}) == set()
