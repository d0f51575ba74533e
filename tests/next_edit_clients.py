"""The next-edit requests Continue and Zed send, built as their sources build them (pure functions, checked against
those sources' own expected strings in tests/test_next_edit_clients.py), and Zed's strict reading of the answer.

Continue (continuedev/continue d0a3c0b626b5bebc3bef4742eec05a0242be0bab):
- core/nextEdit/templating/instinct.ts (contextSnippetsBlock, currentFileContentBlock, editHistoryBlock),
  templating/utils.ts (insertCursorToken), templating/NextEditPromptEngine.ts (the `instinct` template, rendered by
  Handlebars `{{{...}}}`: raw, a missing value empty), constants.ts (the markers, INSTINCT_USER_PROMPT_PREFIX).
- core/nextEdit/NextEditProvider.ts `_handleCompletion`: `llm.chat(endpointType === "fineTuned" ? [prompts[1]] :
  prompts, token, {stream: false})`, and core.ts / the VS Code extension initialize it "fineTuned": the user message
  only. `_prepareLlm` sets temperature 0.01 when the config leaves it unset.
- provider `openai` (core/llm/index.ts streamChat → openAIAdapterNonStream; openaiTypeConverters.ts toChatBody;
  packages/openai-adapters/src/apis/OpenAI.ts chatCompletionNonStream, the openai SDK's JSON.stringify):
  POST {apiBase}chat/completions `{"messages":[{"role":"user","content":...}],"model","max_tokens","temperature",
  "stream":false}`.
- provider `vllm` (core/llm/llms/Vllm.ts extends OpenAI; autodetect.ts: vllm is not in PROVIDER_HANDLES_TEMPLATING, a
  name like `instinct` templates as chatml, templates/chat.ts chatmlTemplateMessages; OpenAI.ts
  `_legacystreamComplete`, since `_prepareLlm` sets useLegacyCompletionsEndpoint): POST {apiBase}completions
  `{"model","max_tokens","temperature","stream":true,"prompt":<chatml of the user message>}`.

Zed (zed-industries/zed, the OpenAI-compatible edit prediction provider of PR #49554):
- crates/edit_prediction/src/zeta.rs (0438acefe7aa1fc3082b77a3f783bcc1b7dd50cf): a model named `zeta` or `zeta1`
  (prompt_format `infer`) gets the zeta1 prompt, `max_tokens = max_output_tokens * 4` and 4 stop strings,
  `<|editable_region_end|>` followed by 0 to 3 newlines.
- crates/zeta_prompt (mod zeta1: format_zeta1_prompt, format_zeta1_excerpt, format_zeta1_event; byte offsets).
- crates/edit_prediction/src/open_ai_compatible.rs (0fd68c5e45b05e43f4d558c87a0c55c8adaaf7c2)
  send_custom_server_request: serde_json of RawCompletionRequest {model, prompt, max_tokens, temperature (None:
  left out), stop, environment (None: left out)}, then `serde_json::from_str::<RawCompletionResponse>`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

# --- Continue: Instinct --------------------------------------------------------------------------------------------

CURSOR = "<|user_cursor_is_here|>"
REGION_START = "<|editable_region_start|>"
REGION_END = "<|editable_region_end|>"
CONTEXT_FILE = "<|context_file|>"
SNIPPET = "<|snippet|>"
INSTINCT_USER_PROMPT_PREFIX = (
    "Reference the user excerpt, user edits, and the snippets to understand the developer's intent. Update the "
    "editable region of the user excerpt by predicting and completing the changes they would have made next. This "
    "may be a deletion, addition, or modification of code."
)
CONTINUE_TEMPERATURE = 0.01  # NextEditProvider._prepareLlm, when the config sets none
# JavaScript's `.` and multiline `^` stop at these, where Python's stop at "\n" only.
_JS_LINE_BREAKS = "\n\r\u2028\u2029"
_SNIPPET_HEADER = re.compile(rf"^(\+\+\+\+\+ )([^{_JS_LINE_BREAKS}]*)")
_INDEX_LINE = re.compile(rf"(?:^|(?<=[{_JS_LINE_BREAKS}]))Index: ")  # /^Index: /m


def context_snippets_block(snippets: str) -> str:
    """instinct.ts contextSnippetsBlock: Codestral-style `+++++ path` headers as `<|context_file|>: path`, a
    `<|snippet|>` line before the content that follows a header."""
    lines: list[str] = []
    for line in snippets.split("\n"):
        if header := _SNIPPET_HEADER.match(line):
            lines.append(f"{CONTEXT_FILE}: {header[2]}")
            continue
        if lines and lines[-1].startswith(CONTEXT_FILE):
            lines.append(SNIPPET)
        lines.append(line)
    return "\n".join(lines)


def insert_cursor_token(lines: list[str], line: int, character: int, token: str = CURSOR) -> list[str]:
    """templating/utils.ts insertCursorToken: `token` at the cursor, the column clamped to the line (in UTF-16 code
    units, as JavaScript strings and editor positions count)."""
    if line < 0 or line >= len(lines):
        return lines
    units = lines[line].encode("utf-16-le", "surrogatepass")
    at = min(max(0, character), len(units) // 2) * 2
    before, after = (part.decode("utf-16-le", "surrogatepass") for part in (units[:at], units[at:]))
    return [*lines[:line], before + token + after, *lines[line + 1 :]]


@dataclass(frozen=True)
class Excerpt:
    """What instinct.ts's currentFileContentBlock is given: the file, the window shown, the editable region (lines,
    both ends included) and the cursor."""

    content: str
    window_start: int
    window_end: int
    region_start: int
    region_end: int
    cursor_line: int
    cursor_character: int


def current_file_content_block(excerpt: Excerpt) -> str:
    """instinct.ts currentFileContentBlock: the window's lines, the cursor marked and the editable region fenced."""
    lines = insert_cursor_token(excerpt.content.split("\n"), excerpt.cursor_line, excerpt.cursor_character)
    marked = [
        *lines[excerpt.window_start : excerpt.region_start],
        REGION_START,
        *lines[excerpt.region_start : excerpt.region_end + 1],
        REGION_END,
        *lines[excerpt.region_end + 1 : excerpt.window_end + 1],
    ]
    return "\n".join(marked)


def edit_history_block(diffs: Sequence[str]) -> str:
    """instinct.ts editHistoryBlock: each `Index: path` section of the unified diffs as a ```diff block headed
    `User edited file "path"` (header lines and blank lines dropped, as Continue drops them)."""
    blocks = []
    for history in diffs:
        if not _js_trim(history):
            continue
        for section in (s for s in _INDEX_LINE.split(history) if _js_trim(s)):
            lines = section.split("\n")
            body = [line for line in lines if not line.startswith(("---", "+++", "===")) and _js_trim(line) != ""][1:]
            diff = [line for line in body if line.startswith(("@@", "+", "-", " "))]
            if diff:
                blocks.append("\n".join([f'User edited file "{lines[0]}"', "", "```diff", "\n".join(diff), "```"]))
    return "\n".join(blocks)


def _js_trim(text: str) -> str:
    return text.strip(" \t\n\r\v\f\u00a0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a"
                      "\u2028\u2029\u202f\u205f\u3000\ufeff")  # fmt: skip


def instinct_user_prompt(excerpt: Excerpt, file_path: str, diffs: Sequence[str] = (), snippets: str = "") -> str:
    """The user message of InstinctProvider.generatePrompts: NextEditPromptEngine.ts's `instinct` template."""
    return (
        f"{INSTINCT_USER_PROMPT_PREFIX}\n\n### Context:\n{context_snippets_block(snippets)}\n\n### User Edits:\n\n"
        f"{edit_history_block(diffs)}\n\n### User Excerpt:\n{file_path}\n\n{current_file_content_block(excerpt)}"
        "```\n### Response:"
    )


def instinct_window(content: str, cursor_line: int, region_start: int, region_end: int) -> tuple[int, int, int, int]:
    """InstinctProvider.buildPromptContext: 25 lines either side of the cursor, the editable region cut to them."""
    window_start = max(0, cursor_line - 25)
    window_end = min(len(content.split("\n")) - 1, cursor_line + 25)
    return window_start, window_end, max(window_start, region_start), min(window_end, region_end)


def js_json(value: Any) -> bytes:
    """JSON.stringify's bytes: no spaces, non-ASCII as it is (what Python's json writes with these options)."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()


def continue_chat_body(model: str, user_prompt: str, max_tokens: int) -> bytes:
    """Provider `openai`: the non-streamed chat Continue's next edit sends (toChatBody's key order)."""
    body = {"messages": [{"role": "user", "content": user_prompt}], "model": model, "max_tokens": max_tokens}
    return js_json({**body, "temperature": CONTINUE_TEMPERATURE, "stream": False})


def chatml(user_prompt: str) -> str:
    """templates/chat.ts chatmlTemplateMessages for one user message."""
    return f"<|im_start|>user\n{user_prompt}<|im_end|>\n<|im_start|>assistant\n"


def continue_vllm_completions_body(model: str, user_prompt: str, max_tokens: int) -> bytes:
    """Provider `vllm`: the streamed completion Continue's next edit sends (_legacystreamComplete's key order)."""
    body = {"model": model, "max_tokens": max_tokens, "temperature": CONTINUE_TEMPERATURE, "stream": True}
    return js_json({**body, "prompt": chatml(user_prompt)})


def continue_chat_answer(body: bytes) -> tuple[str, str | None]:
    """What Continue takes from the non-streamed answer (fromChatResponse, openAIAdapterNonStream): the first choice's
    message content ("" when null) and the response's `id`, its nextEditOutcome `requestId`."""
    data = json.loads(body)
    return data["choices"][0]["message"].get("content") or "", data.get("id")


def continue_stream_text(events: Sequence[Any]) -> str:
    """What _legacystreamComplete keeps of streamSse's events: each first choice's `text`."""
    return "".join(
        event["choices"][0]["text"]
        for event in events
        if event != "[DONE]" and event.get("choices") and event["choices"][0].get("text")
    )


# --- Zed: zeta1 through the OpenAI-compatible provider ---------------------------------------------------------------

ZETA1_CURSOR = CURSOR
ZETA1_START_OF_FILE = "<|start_of_file|>"
ZETA1_INSTRUCTION = (
    "### Instruction:\nYou are a code completion assistant and your task is to analyze user edits and then rewrite an "
    "excerpt that the user provides, suggesting the appropriate edits within the excerpt, taking into account the "
    "cursor location.\n\n### User Edits:\n\n"
)
ZETA1_STOP = [REGION_END, f"{REGION_END}\n", f"{REGION_END}\n\n", f"{REGION_END}\n\n\n"]


@dataclass(frozen=True)
class ZetaEvent:
    """zeta_prompt's Event::BufferChange: a file's unified diff (and its old path, when renamed)."""

    path: str
    diff: str
    old_path: str | None = None


@dataclass(frozen=True)
class ZetaExcerpt:
    """zeta1's inputs: the excerpt around the cursor and byte ranges in it (editable, context, cursor)."""

    path: str
    text: str
    editable: tuple[int, int]
    context: tuple[int, int]
    cursor: int
    start_row: int | None


def zeta1_event(event: ZetaEvent) -> str:
    """mod zeta1 format_zeta1_event."""
    text = ""
    if event.old_path is not None and event.old_path != event.path:
        text += f"User renamed {event.old_path} to {event.path}\n\n"
    if event.diff:
        text += f"User edited {event.path}:\n```diff\n{event.diff}\n```"
    return text


def zeta1_excerpt(excerpt: ZetaExcerpt) -> str:
    """mod zeta1 format_zeta1_excerpt (the ranges are byte offsets in the UTF-8 excerpt, as in Rust)."""
    raw = excerpt.text.encode()
    (edit_start, edit_end), (context_start, context_end) = excerpt.editable, excerpt.context

    def part(start: int, end: int) -> str:
        return raw[start:end].decode()

    text = f"```{excerpt.path}\n"
    if excerpt.start_row == 0 and context_start == 0:
        text += f"{ZETA1_START_OF_FILE}\n"
    text += part(context_start, edit_start) + f"{REGION_START}\n" + part(edit_start, excerpt.cursor) + ZETA1_CURSOR
    text += part(excerpt.cursor, edit_end) + f"\n{REGION_END}" + part(edit_end, context_end) + "\n```"
    return text


def zeta1_prompt(events: Sequence[ZetaEvent], excerpt: ZetaExcerpt) -> str:
    """mod zeta1 format_zeta1_from_input: the instruction, the edits (oldest first), the excerpt, `### Response:`."""
    edits = "\n\n".join(text for text in map(zeta1_event, events) if text)
    return f"{ZETA1_INSTRUCTION}{edits}\n\n### User Excerpt:\n\n{zeta1_excerpt(excerpt)}\n\n### Response:\n"


def zed_completions_body(model: str, prompt: str, max_output_tokens: int) -> bytes:
    """serde_json of Zed's RawCompletionRequest for zeta1 (field order; temperature and environment None)."""
    return js_json({"model": model, "prompt": prompt, "max_tokens": max_output_tokens * 4, "stop": ZETA1_STOP})


@dataclass(frozen=True)
class ZedCompletion:
    """What Zed takes from a RawCompletionResponse: the first choice's text and the id it keeps for the prediction."""

    text: str
    id: str


class ZedParseError(ValueError):
    """What `serde_json::from_str::<RawCompletionResponse>` would refuse ("Failed to parse completion response")."""


def _field(obj: Any, name: str, kind: str, optional: bool = False) -> Any:
    """One field as serde's derive reads it: required unless Option (missing or null is None), of the Rust type."""
    if not isinstance(obj, dict):
        raise ZedParseError(f"expected an object holding {name!r}, got {obj!r}")
    value = obj.get(name)
    if value is None and optional:
        return None
    if name not in obj:
        raise ZedParseError(f"missing field `{name}`")
    limits = {"u32": 2**32, "u64": 2**64}
    if kind == "str" and isinstance(value, str):
        return value
    if kind in limits and type(value) is int and 0 <= value < limits[kind]:
        return value
    if kind == "list" and isinstance(value, list):
        return value
    if kind == "object" and isinstance(value, dict):
        return value
    raise ZedParseError(f"invalid type for `{name}`: {value!r}, expected {kind}")


def parse_zed_response(body: bytes) -> ZedCompletion:
    """RawCompletionResponse {id, object, created: u64, model, choices: [{text, finish_reason: Option}], usage:
    {prompt_tokens, completion_tokens, total_tokens: u32}} read as strictly as serde does (unknown fields ignored)."""
    try:
        data = json.loads(body)
    except ValueError as exc:
        raise ZedParseError(f"not JSON: {exc}") from None
    for name, kind in (("id", "str"), ("object", "str"), ("created", "u64"), ("model", "str")):
        _field(data, name, kind)
    choices = _field(data, "choices", "list")
    for choice in choices:
        _field(choice, "text", "str")
        _field(choice, "finish_reason", "str", optional=True)
    usage = _field(data, "usage", "object")
    for name in ("prompt_tokens", "completion_tokens", "total_tokens"):
        _field(usage, name, "u32")
    return ZedCompletion(text=choices[0]["text"] if choices else "", id=data["id"])


# --- a file being edited, for the e2e tests and bench/bench_next_edit.py ------------------------------------------


def sample_module(functions: int = 12) -> str:
    """A Python module of `functions` small functions, 8 lines each after a 4-line head (100 lines for 12)."""
    lines = ['"""Boxes and their measures."""', "", "import math", ""]
    for i in range(functions):
        lines += [
            "",
            f"def measure_{i}(width, height, depth={i + 1}):",
            f'    """Measure number {i} of a box: its volume beyond its base, or the side of its base."""',
            "    area = width * height",
            f"    volume = area * depth + {i}",
            "    if volume > area:",
            "        return volume - area",
            "    return math.sqrt(area)",
        ]
    return "\n".join(lines) + "\n"


SAMPLE_PATH = "file:///work/boxes.py"
SAMPLE_DIFF = (
    "Index: boxes.py\n===================================================================\n--- boxes.py\n+++ boxes.py\n"
    "@@ -52,3 +52,3 @@\n     area = width * height\n-    volume = area * depth\n+    volume = area * depth + 6\n"
    "     if volume > area:"
)


def sample_excerpt(region_lines: int = 40, cursor_line: int = 50, typed: int = 0) -> tuple[str, Excerpt]:
    """The sample module with its line `cursor_line` cut after `typed` more characters of its indentation (the user
    is typing there), and Continue's Instinct excerpt of it: an editable region of `region_lines` lines around the
    cursor, inside the 25-line window."""
    lines = sample_module().split("\n")
    line = lines[cursor_line]
    indent = len(line) - len(line.lstrip())
    lines[cursor_line] = line[: indent + typed]
    content = "\n".join(lines)
    start = cursor_line - region_lines // 2
    window = instinct_window(content, cursor_line, start, start + region_lines - 1)
    return content, Excerpt(content, *window, cursor_line=cursor_line, cursor_character=indent + typed)


def sample_zeta_input(typed: int = 0, path: str = "boxes.py") -> tuple[list[ZetaEvent], ZetaExcerpt]:
    """Zed's zeta1 input for the sample module with the user typing into line 50 (as sample_excerpt): the last edit,
    and an excerpt of lines 30-69 whose 20 middle lines are editable (byte offsets, as Zed computes them)."""
    content, excerpt = sample_excerpt(region_lines=20, typed=typed)
    raw, lines = content.encode(), content.split("\n")
    offsets = [len("\n".join(lines[:n]).encode()) + (1 if n else 0) for n in range(len(lines) + 1)]
    start, end = offsets[30], offsets[70]
    cursor = offsets[excerpt.cursor_line] + excerpt.cursor_character - start
    text = raw[start:end].decode()
    zeta = ZetaExcerpt(path, text, (offsets[40] - start, offsets[60] - start), (0, end - start), cursor, 30)
    return [ZetaEvent(path, "@@" + SAMPLE_DIFF.split("\n@@", 1)[1])], zeta
