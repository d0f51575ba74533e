"""kodify_proxy/client_config.py with a next-edit model served (deploy/compose.next-edit.yaml): Continue's config.yaml
gets it as an autocomplete model with `capabilities: [next_edit]`, selected before the fill-in-the-middle one. The
printed config read by Continue's `cn` and the requests it leads to: tests/e2e/test_next_edit.py."""

from __future__ import annotations

import pytest

from kodify_proxy.client_config import (
    ClientModels,
    Endpoint,
    ServedModel,
    build_continue_config,
    build_kodify_config,
    choose_models,
    next_edit_max_tokens,
)

QWEN = ServedModel("Qwen2.5-Coder-7B-Instruct", 32768)
INSTINCT = ServedModel("instinct", 32768)
EMBED = ServedModel("bge-m3-embed", 8192)
ENDPOINT = Endpoint("http://kodify:8000", "${{ secrets.KODIFY_TOKEN }}")


@pytest.mark.parametrize(
    "name, next_edit",
    [("instinct", True), ("continuedev/Instinct-AWQ", True), ("mercury-coder-small", True), ("Qwen2.5-Coder", False)],
)
def test_a_next_edit_model_is_told_by_its_name_as_continue_tells_it(name: str, next_edit: bool) -> None:
    assert ServedModel(name).is_next_edit is next_edit


def test_the_next_edit_model_is_never_the_chat_or_fill_in_the_middle_model() -> None:
    chosen = choose_models((INSTINCT, EMBED, QWEN), tool_use=True)
    assert chosen == ClientModels(chat=QWEN, autocomplete=QWEN, embed=EMBED, tool_use=True, next_edit=INSTINCT)
    alone = choose_models((INSTINCT,))  # all there is: it chats as well
    assert (alone.chat, alone.next_edit) == (INSTINCT, INSTINCT)
    assert choose_models((QWEN,)).next_edit is None


def test_continue_config_lists_next_edit_first_of_the_autocomplete_models() -> None:
    models = build_continue_config(choose_models((QWEN, INSTINCT, EMBED), tool_use=True), ENDPOINT)["models"]
    assert [(m["name"], m["model"], m["roles"]) for m in models] == [
        ("Kodify", "Qwen2.5-Coder-7B-Instruct", ["chat", "edit", "apply"]),
        ("Kodify next edit", "instinct", ["autocomplete"]),
        ("Kodify autocomplete", "Qwen2.5-Coder-7B-Instruct", ["autocomplete"]),
        ("Kodify embeddings", "bge-m3-embed", ["embed"]),
    ]
    assert models[1] == {
        "name": "Kodify next edit",
        "provider": "openai",
        "model": "instinct",
        "apiBase": "http://kodify:8000/v1",
        "apiKey": "${{ secrets.KODIFY_TOKEN }}",
        "roles": ["autocomplete"],
        "capabilities": ["next_edit"],
        "defaultCompletionOptions": {"contextLength": 32768, "maxTokens": 1024},
        "autocompleteOptions": {"debounceDelay": 250, "maxPromptTokens": 1024, "useCache": True, "onlyMyCode": True},
    }


def test_without_context_length_the_entry_has_no_budget_and_other_configs_are_unchanged() -> None:
    models = choose_models((ServedModel("m"), ServedModel("instinct")))
    entry = build_continue_config(models, ENDPOINT)["models"][1]
    assert entry["capabilities"] == ["next_edit"] and "defaultCompletionOptions" not in entry
    assert build_kodify_config(models, ENDPOINT)["tabAutocompleteModel"]["model"] == "m"


@pytest.mark.parametrize(("context", "budget"), [(2048, 512), (8192, 1024), (32768, 1024)])
def test_the_answer_budget_covers_continues_512_token_editable_region(context: int, budget: int) -> None:
    assert next_edit_max_tokens(context) == budget
