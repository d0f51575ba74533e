"""tests/next_edit_clients.py against the clients' own expected strings: Continue's core/nextEdit/templating/
instinct.vitest.ts (d0a3c0b626b5bebc3bef4742eec05a0242be0bab) and Zed's zeta1 prompt tests (crates/zeta_prompt,
test_format_zeta1_from_input_*); the whole requests byte for byte; Zed's strict reading of an answer."""

from __future__ import annotations

import json

import pytest

from tests.next_edit_clients import (
    INSTINCT_USER_PROMPT_PREFIX,
    Excerpt,
    ZedCompletion,
    ZedParseError,
    ZetaEvent,
    ZetaExcerpt,
    chatml,
    context_snippets_block,
    continue_chat_answer,
    continue_chat_body,
    continue_stream_text,
    continue_vllm_completions_body,
    current_file_content_block,
    edit_history_block,
    insert_cursor_token,
    instinct_user_prompt,
    instinct_window,
    parse_zed_response,
    zed_completions_body,
    zeta1_prompt,
)

# --- Continue: instinct.vitest.ts, case by case -------------------------------------------------------------------

SNIPPETS = {
    "empty": ("", ""),
    "single": (
        '+++++ src/utils.ts\nfunction helper() {\n  return "test";\n}',
        '<|context_file|>: src/utils.ts\n<|snippet|>\nfunction helper() {\n  return "test";\n}',
    ),
    "multiple": (
        '+++++ src/file1.ts\nconst var1 = "value1";\n\n+++++ src/file2.ts\nconst var2 = "value2";\nfunction test() {}',
        '<|context_file|>: src/file1.ts\n<|snippet|>\nconst var1 = "value1";\n\n<|context_file|>: src/file2.ts\n'
        '<|snippet|>\nconst var2 = "value2";\nfunction test() {}',
    ),
    "header without content": ("+++++ src/empty.ts", "<|context_file|>: src/empty.ts"),
    "malformed header": (
        "not a header\n+++++ src/valid.ts\nvalid content",
        "not a header\n<|context_file|>: src/valid.ts\n<|snippet|>\nvalid content",
    ),
    "consecutive headers": (
        "+++++ src/file1.ts\n+++++ src/file2.ts\ncontent after headers",
        "<|context_file|>: src/file1.ts\n<|context_file|>: src/file2.ts\n<|snippet|>\ncontent after headers",
    ),
}


@pytest.mark.parametrize("given, expected", SNIPPETS.values(), ids=SNIPPETS)
def test_context_snippets_block(given: str, expected: str) -> None:
    assert context_snippets_block(given) == expected


FIVE = "line 0\nline 1\nline 2\nline 3\nline 4"
THREE = "line 0\nline 1\nline 2"
CONTENT = {
    "cursor and region": (
        Excerpt(FIVE, 0, 4, 1, 3, 2, 4),
        "line 0\n<|editable_region_start|>\nline 1\nline<|user_cursor_is_here|> 2\nline 3\n"
        "<|editable_region_end|>\nline 4",
    ),
    "cursor at line start": (
        Excerpt(THREE, 0, 2, 0, 2, 1, 0),
        "<|editable_region_start|>\nline 0\n<|user_cursor_is_here|>line 1\nline 2\n<|editable_region_end|>",
    ),
    "cursor at line end": (
        Excerpt(THREE, 0, 2, 0, 2, 1, 6),
        "<|editable_region_start|>\nline 0\nline 1<|user_cursor_is_here|>\nline 2\n<|editable_region_end|>",
    ),
    "one-line region": (
        Excerpt(THREE, 0, 2, 1, 1, 1, 2),
        "line 0\n<|editable_region_start|>\nli<|user_cursor_is_here|>ne 1\n<|editable_region_end|>\nline 2",
    ),
    "cursor out of bounds": (
        Excerpt("line 0\nline 1", 0, 1, 0, 1, 10, 0),
        "<|editable_region_start|>\nline 0\nline 1\n<|editable_region_end|>",
    ),
    "window": (
        Excerpt(FIVE, 1, 3, 2, 2, 2, 2),
        "line 1\n<|editable_region_start|>\nli<|user_cursor_is_here|>ne 2\n<|editable_region_end|>\nline 3",
    ),
}


@pytest.mark.parametrize("excerpt, expected", CONTENT.values(), ids=CONTENT)
def test_current_file_content_block(excerpt: Excerpt, expected: str) -> None:
    assert current_file_content_block(excerpt) == expected


def test_cursor_column_counts_utf16_code_units_as_the_editor_does() -> None:
    assert insert_cursor_token(["a😀b"], 0, 3, "|") == ["a😀|b"]  # the emoji is 2 UTF-16 units
    assert insert_cursor_token(["ab"], 0, 99, "|") == ["ab|"]
    assert insert_cursor_token(["ab"], 0, -1, "|") == ["|ab"]


HEADER = "===================================================================\n"
DIFF1 = (
    f"Index: file1.js\n{HEADER}--- a/file1.js\t2023\n+++ b/file1.js\t2023\n@@ -1 +1 @@\n-const a = 1;\n+const b = 1;"
)
DIFF2 = f"Index: file2.js\n{HEADER}--- a/file2.js\t2023\n+++ b/file2.js\t2023\n@@ -1 +1 @@\n-let x = 1;\n+let x = 2;"
BLOCK1 = 'User edited file "file1.js"\n\n```diff\n@@ -1 +1 @@\n-const a = 1;\n+const b = 1;\n```'
BLOCK2 = 'User edited file "file2.js"\n\n```diff\n@@ -1 +1 @@\n-let x = 1;\n+let x = 2;\n```'
HISTORY = {
    "empty": ([], ""),
    "one": ([DIFF1], BLOCK1),
    "two in one string": ([f"{DIFF1}\n{DIFF2}"], f"{BLOCK1}\n{BLOCK2}"),
    "two strings": ([DIFF1, DIFF2], f"{BLOCK1}\n{BLOCK2}"),
    "blank entries": (["", "  \n", DIFF1], BLOCK1),
    "minimal": (
        [f"Index: simple.txt\n{HEADER}@@ -1 +1 @@\n-old text\n+new text"],
        'User edited file "simple.txt"\n\n```diff\n@@ -1 +1 @@\n-old text\n+new text\n```',
    ),
    "new file": (
        [f"Index: newfile.js\n{HEADER}--- /dev/null\n+++ b/newfile.js\n@@ -0,0 +1,2 @@\n+function f() {{\n+}}"],
        'User edited file "newfile.js"\n\n```diff\n@@ -0,0 +1,2 @@\n+function f() {\n+}\n```',
    ),
    "no diff lines": ([f"Index: empty.txt\n{HEADER}"], ""),
}


@pytest.mark.parametrize("diffs, expected", HISTORY.values(), ids=HISTORY)
def test_edit_history_block(diffs: list[str], expected: str) -> None:
    assert edit_history_block(diffs) == expected


# --- Continue: the whole request ----------------------------------------------------------------------------------

FILE = "import math\n\n\ndef area(r):\n    return math.pi * r * r\n\n\ndef perimeter(r):\n    return 2 * "
EXCERPT = Excerpt(FILE, *instinct_window(FILE, 8, 7, 8), cursor_line=8, cursor_character=17)
PROMPT = (
    f"{INSTINCT_USER_PROMPT_PREFIX}\n\n### Context:\n\n\n### User Edits:\n\n{BLOCK1}\n\n### User Excerpt:\n"
    "file:///work/circle.py\n\nimport math\n\n\ndef area(r):\n    return math.pi * r * r\n\n\n"
    "<|editable_region_start|>\ndef perimeter(r):\n    return 2 * <|user_cursor_is_here|>\n<|editable_region_end|>"
    "```\n### Response:"
)


def test_instinct_user_prompt_is_the_template_rendered() -> None:
    assert (EXCERPT.window_start, EXCERPT.window_end, EXCERPT.region_start, EXCERPT.region_end) == (0, 8, 7, 8)
    assert instinct_user_prompt(EXCERPT, "file:///work/circle.py", [DIFF1]) == PROMPT
    assert INSTINCT_USER_PROMPT_PREFIX.endswith("This may be a deletion, addition, or modification of code.")


def test_instinct_window_is_25_lines_either_side_of_the_cursor() -> None:
    text = "\n".join(f"line {i}" for i in range(100))
    assert instinct_window(text, 50, 30, 70) == (25, 75, 30, 70)
    assert instinct_window(text, 10, 0, 99) == (0, 35, 0, 35)


def test_continue_requests_byte_for_byte() -> None:
    assert continue_chat_body("instinct", "hi\n<|x|>", 512) == (
        b'{"messages":[{"role":"user","content":"hi\\n<|x|>"}],"model":"instinct","max_tokens":512,'
        b'"temperature":0.01,"stream":false}'
    )
    assert chatml("hi") == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    expected = (
        '{"model":"instinct","max_tokens":64,"temperature":0.01,"stream":true,'
        '"prompt":"<|im_start|>user\\nh\u00e9<|im_end|>\\n<|im_start|>assistant\\n"}'
    )
    assert continue_vllm_completions_body("instinct", "h\u00e9", 64) == expected.encode()


def test_continue_reads_the_answer_as_fromchatresponse_does() -> None:
    body = json.dumps({"id": "chatcmpl-1", "choices": [{"message": {"role": "assistant", "content": None}}]})
    assert continue_chat_answer(body.encode()) == ("", "chatcmpl-1")
    events = [{"choices": [{"text": "a"}]}, {"choices": [{"text": ""}]}, {"choices": []}, "[DONE]"]
    assert continue_stream_text(events) == "a"


# --- Zed: zeta1 (crates/zeta_prompt's tests) ------------------------------------------------------------------------

INSTRUCTION = (
    "### Instruction:\nYou are a code completion assistant and your task is to analyze user edits and then rewrite an "
    "excerpt that the user provides, suggesting the appropriate edits within the excerpt, taking into account the "
    "cursor location.\n\n### User Edits:\n\n"
)
BASIC = "fn before() {}\nfn foo() {\n    let x = 1;\n}\nfn after() {}\n"
SUB = "// prefix\nfn foo() {\n    let x = 1;\n}\n// suffix\n"
ZETA1 = {
    "basic": (
        [ZetaEvent("other.rs", "-old\n+new\n")],
        ZetaExcerpt("src/main.rs", BASIC, (15, 41), (0, len(BASIC)), 30, 0),
        "User edited other.rs:\n```diff\n-old\n+new\n\n```\n\n### User Excerpt:\n\n```src/main.rs\n<|start_of_file|>\n"
        "fn before() {}\n<|editable_region_start|>\nfn foo() {\n    <|user_cursor_is_here|>let x = 1;\n\n"
        "<|editable_region_end|>}\nfn after() {}\n\n```\n\n### Response:\n",
    ),
    "no start of file": (
        [],
        ZetaExcerpt("src/main.rs", "fn foo() {\n    let x = 1;\n}\n", (0, 28), (0, 28), 15, 10),
        "\n\n### User Excerpt:\n\n```src/main.rs\n<|editable_region_start|>\nfn foo() {\n"
        "    <|user_cursor_is_here|>let x = 1;\n}\n\n<|editable_region_end|>\n```\n\n### Response:\n",
    ),
    "sub ranges": (
        [],
        ZetaExcerpt("test.rs", SUB, (10, 37), (0, len(SUB)), 25, 0),
        "\n\n### User Excerpt:\n\n```test.rs\n<|start_of_file|>\n// prefix\n<|editable_region_start|>\nfn foo() {\n"
        "    <|user_cursor_is_here|>let x = 1;\n}\n<|editable_region_end|>\n// suffix\n\n```\n\n### Response:\n",
    ),
}


@pytest.mark.parametrize("events, excerpt, expected", ZETA1.values(), ids=ZETA1)
def test_zeta1_prompt(events: list[ZetaEvent], excerpt: ZetaExcerpt, expected: str) -> None:
    assert zeta1_prompt(events, excerpt) == INSTRUCTION + expected


def test_zeta1_events_oldest_first_and_renames() -> None:
    events = [ZetaEvent("a.rs", "-1\n+2"), ZetaEvent("b.rs", "", old_path="c.rs"), ZetaEvent("d.rs", "")]
    excerpt = ZetaExcerpt("a.rs", "x", (0, 1), (0, 1), 0, None)
    edits = "User edited a.rs:\n```diff\n-1\n+2\n```\n\nUser renamed c.rs to b.rs\n\n"
    assert zeta1_prompt(events, excerpt).startswith(INSTRUCTION + edits + "\n\n### User Excerpt:")


def test_zed_request_byte_for_byte() -> None:
    assert zed_completions_body("zeta", "p\n", 64) == (
        b'{"model":"zeta","prompt":"p\\n","max_tokens":256,"stop":["<|editable_region_end|>",'
        b'"<|editable_region_end|>\\n","<|editable_region_end|>\\n\\n","<|editable_region_end|>\\n\\n\\n"]}'
    )


# --- Zed: RawCompletionResponse as serde reads it -------------------------------------------------------------------

USAGE = {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}
GOOD = {
    "id": "cmpl-1",
    "object": "text_completion",
    "created": 1796695579,
    "model": "instinct-tiny",
    "choices": [{"index": 0, "text": "ab", "finish_reason": None, "logprobs": None}],
    "usage": {**USAGE, "prompt_tokens_details": None},
    "system_fingerprint": None,
}


def test_zed_takes_the_first_choice_and_the_id() -> None:
    assert parse_zed_response(json.dumps(GOOD).encode()) == ZedCompletion("ab", "cmpl-1")
    assert parse_zed_response(json.dumps({**GOOD, "choices": []}).encode()) == ZedCompletion("", "cmpl-1")
    missing_reason = {**GOOD, "choices": [{"text": "c"}]}  # an Option is None when missing
    assert parse_zed_response(json.dumps(missing_reason).encode()).text == "c"


REFUSED = {
    "no usage": {k: v for k, v in GOOD.items() if k != "usage"},
    "null usage": {**GOOD, "usage": None},
    "usage without total": {**GOOD, "usage": {"prompt_tokens": 5, "completion_tokens": 2}},
    "float created": {**GOOD, "created": 1796695579.5},
    "negative tokens": {**GOOD, "usage": {**USAGE, "completion_tokens": -1}},
    "tokens past u32": {**GOOD, "usage": {**USAGE, "total_tokens": 2**32}},
    "no object": {k: v for k, v in GOOD.items() if k != "object"},
    "numeric id": {**GOOD, "id": 7},
    "text null": {**GOOD, "choices": [{"text": None}]},
    "finish_reason a number": {**GOOD, "choices": [{"text": "", "finish_reason": 1}]},
    "an error body": {"error": {"message": "nope", "type": "invalid_request_error", "param": None, "code": None}},
}


@pytest.mark.parametrize("body", REFUSED.values(), ids=REFUSED)
def test_zed_refuses_what_serde_refuses(body: dict[str, object]) -> None:
    with pytest.raises(ZedParseError):
        parse_zed_response(json.dumps(body).encode())
