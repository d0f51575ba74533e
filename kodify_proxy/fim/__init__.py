"""Fill-in-the-middle: the package holds the pure prompt building and trimming, for Tabby and OpenAI requests alike;
`fim.post` cuts and cleans a completion, `fim.stream` does it to a stream's events.

Prompt rules follow Tabby's server (crates/tabby/src/services/completion/completion_prompt.rs): snippets become
line comments above the prefix, CRLF is folded to LF for the model and restored in the completion.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Final

from kodify_proxy.errors import InvalidRequest
from kodify_proxy.preprocess import LanguageRules, PreprocessingConfig
from kodify_proxy.protocol import CompletionRequest

# VS Code language ids and file extensions that clients send, mapped to the ids the configs use.
LANGUAGE_ALIASES: Final = {
    "typescriptreact": "typescript",
    "javascriptreact": "javascript",
    "tsx": "typescript",
    "jsx": "javascript",
    "ts": "typescript",
    "js": "javascript",
    "py": "python",
    "c#": "csharp",
    "cs": "csharp",
    "golang": "go",
    "c++": "cpp",
    "kt": "kotlin",
    "rs": "rust",
    "rb": "ruby",
    "shellscript": "shell",
    "sh": "shell",
    "bash": "shell",
}

# FIM formats clients put into prompts, with each family's other special tokens. Continue, for one, sends
# StarCoder tokens to any model whose name lacks "qwen" and "coder" (core/autocomplete/templating).
# DeepSeek-Coder's tokens use FULLWIDTH VERTICAL LINE (U+FF5C) and LOWER ONE EIGHTH BLOCK (U+2581).
_DEEPSEEK = "<\uff5cfim\u2581begin\uff5c>{prefix}<\uff5cfim\u2581hole\uff5c>{suffix}<\uff5cfim\u2581end\uff5c>"
KNOWN_FAMILIES: Final[tuple[tuple[str, tuple[str, ...]], ...]] = (
    (
        "<|fim_prefix|>{prefix}<|fim_suffix|>{suffix}<|fim_middle|>",
        ("<|fim_pad|>", "<|repo_name|>", "<|file_sep|>", "<|endoftext|>"),
    ),
    (
        "<fim_prefix>{prefix}<fim_suffix>{suffix}<fim_middle>",
        ("<fim_pad>", "<repo_name>", "<file_sep>", "<|endoftext|>"),
    ),
    (_DEEPSEEK, ("<\uff5cend\u2581of\u2581sentence\uff5c>", "<\uff5cbegin\u2581of\u2581sentence\uff5c>")),
    ("<PRE> {prefix} <SUF>{suffix} <MID>", ("<EOT>",)),
    ("[SUFFIX]{suffix}[PREFIX]{prefix}", ("[MIDDLE]",)),
)


@dataclass(frozen=True)
class Template:
    """A FIM template cut at its two placeholders: head {first} middle {second} tail."""

    head: str
    middle: str
    tail: str
    suffix_first: bool

    @classmethod
    def parse(cls, template: str) -> Template:
        """Split a template holding {prefix} and {suffix} once each (checked by the config schema)."""
        suffix_first = template.index("{suffix}") < template.index("{prefix}")
        first, second = ("{suffix}", "{prefix}") if suffix_first else ("{prefix}", "{suffix}")
        head, rest = template.split(first, 1)
        middle, tail = rest.split(second, 1)
        return cls(head, middle, tail, suffix_first)

    @property
    def tokens(self) -> tuple[str, ...]:
        """The marker tokens, without the spaces some templates put around them."""
        return tuple(part.strip(" ") for part in (self.head, self.middle, self.tail) if part.strip(" "))

    def render(self, prefix: str, suffix: str) -> str:
        """The prompt for `prefix` and `suffix` (plain substitution: code may contain braces)."""
        first, second = (suffix, prefix) if self.suffix_first else (prefix, suffix)
        return f"{self.head}{first}{self.middle}{second}{self.tail}"

    def split(self, prompt: str) -> tuple[str, str, str] | None:
        """(text before the markers, prefix, suffix) of a prompt in this format, else None.

        Text after the last marker (a client pre-seeding the middle) belongs to the prefix.
        """
        head, middle, tail = (part.strip(" ") for part in (self.head, self.middle, self.tail))
        start = prompt.find(head) if head else 0
        first_at = start + len(head)
        first_end = prompt.find(middle, first_at) if start >= 0 else -1
        second_at = first_end + len(middle)
        second_end = (prompt.find(tail, second_at) if tail else len(prompt)) if first_end >= 0 else -1
        if second_end < 0:
            return None
        first, second = prompt[first_at:first_end], prompt[second_at:second_end]
        if not self.head.endswith(" ") or first.startswith(" "):  # the client kept the template's spaces
            first, second = _unpad(first, self.head, self.middle), _unpad(second, self.middle, self.tail)
        seeded = prompt[second_end + len(tail) :]
        prefix, suffix = (second, first) if self.suffix_first else (first, second)
        return prompt[:start], prefix + seeded, suffix


def _unpad(text: str, left: str, right: str) -> str:
    """Drop the one space a template puts between a marker and a placeholder (Code Llama's `<PRE> {prefix}`).

    Clients that leave those spaces out (`<PRE>{prefix}<SUF>`) keep their text whole: see Template.split.
    """
    if left.endswith(" ") and text.startswith(" "):
        text = text[1:]
    if right.startswith(" ") and text.endswith(" "):
        text = text[:-1]
    return text


@lru_cache(maxsize=32)
def compile_template(template: str) -> Template:
    """The parsed template (cached: configs hold few)."""
    return Template.parse(template)


_KNOWN: Final = tuple((Template.parse(text), extra) for text, extra in KNOWN_FAMILIES)


@dataclass(frozen=True)
class Snippet:
    """Context from another file: its path and a piece of its text."""

    filepath: str
    body: str


@dataclass(frozen=True)
class FimInput:
    """What a prompt is built from: text around the cursor, the file's language, context from other files."""

    prefix: str
    suffix: str
    language: str | None = None
    snippets: tuple[Snippet, ...] = ()
    preamble: str = ""  # text a client put before its FIM markers (e.g. repo context)


@dataclass(frozen=True)
class PostContext:
    """What post-processing needs to know about the request."""

    crlf: bool
    cursor_line: str
    line_rest: str
    stop: tuple[str, ...] = ()  # stop sequences beyond the upstream's limit, applied by cutting the completion


@dataclass(frozen=True)
class FimPrompt:
    """A built prompt with the stop sequences sent upstream (at most the config's upstream_stop_limit)."""

    prompt: str
    stop: tuple[str, ...]
    post: PostContext


def normalize_language(language: str | None) -> str | None:
    """The config's id for a client's language id (`typescriptreact` -> `typescript`)."""
    if not language:
        return None
    lowered = language.strip().lower()
    return LANGUAGE_ALIASES.get(lowered, lowered)


def language_label(language: str | None, config: PreprocessingConfig) -> str | None:
    """A client's language id as the configs spell it, if the config knows it ("other" if not; None if none)."""
    normalized = normalize_language(language)
    if normalized is None:
        return None
    return normalized if normalized in config.languages else "other"


def path_language(path: str | None) -> str | None:
    """The language id of a file's path or URI by its extension (`file:///src/app.tsx` -> `typescript`); None
    without one (`Makefile`, `.bashrc`)."""
    name = (path or "").rsplit("/", 1)[-1].rsplit("\\", 1)[-1]
    stem, dot, extension = name.partition("?")[0].rpartition(".")
    return normalize_language(extension) if dot and stem else None


def trim_prefix(text: str, budget: int) -> str:
    """The last whole lines of `text` that fit in `budget` characters; a longer cursor line keeps its end."""
    if len(text) <= budget:
        return text
    start = len(text) - budget
    newline = text.find("\n", start - 1)
    return text[start:] if newline < 0 else text[newline + 1 :]


def trim_suffix(text: str, budget: int) -> str:
    """The first whole lines of `text` that fit in `budget` characters; a longer first line keeps its start."""
    if len(text) <= budget:
        return text
    newline = text.rfind("\n", 0, budget)
    return text[:budget] if newline < 0 else text[: newline + 1]


def render_snippets(snippets: Iterable[Snippet], line_comment: str, budget: int) -> str:
    """Snippets as line comments (Tabby's layout), in priority order while their bodies fit in `budget`."""
    blocks: list[list[str]] = []
    used = 0
    for snippet in snippets:
        body = snippet.body.replace("\r\n", "\n")
        if not body.strip() or used + len(body) > budget:
            continue
        used += len(body)
        blocks.append([f"Path: {snippet.filepath}", *body.split("\n")])
    lines = [line for i, block in enumerate(blocks) for line in ([""] if i else []) + block]
    return "\n".join(f"{line_comment} {line}" if line else line_comment for line in lines)


def build_stop(config: PreprocessingConfig, rules: LanguageRules | None, extra: Sequence[str] = ()) -> tuple[str, ...]:
    """The client's stops, then the config's, the language's and the model's special tokens, without repeats."""
    language_stops = rules.stop if rules is not None else ()
    return tuple(dict.fromkeys([*extra, *config.stop, *language_stops, *config.special_tokens]))


def build_prompt(request: FimInput, config: PreprocessingConfig, extra_stop: Sequence[str] = ()) -> FimPrompt:
    """The served model's FIM prompt for `request`, within the config's budgets."""
    prefix, suffix = request.prefix.replace("\r\n", "\n"), request.suffix.replace("\r\n", "\n")
    language = normalize_language(request.language)
    rules = config.languages.get(language) if language else None
    budget = config.budget
    body_prefix = trim_prefix(prefix, budget.prefix_chars)
    if rules is not None and request.snippets:
        comments = render_snippets(request.snippets, rules.line_comment, budget.snippets_chars)
        body_prefix = f"{comments}\n{body_prefix}" if comments else body_prefix
    preamble = trim_prefix(request.preamble.replace("\r\n", "\n"), budget.snippets_chars)
    prompt = preamble + compile_template(config.template).render(body_prefix, trim_suffix(suffix, budget.suffix_chars))
    # vLLM takes VLLM_MAX_STOP_STRINGS (4) stop strings; the rest are applied to the completion afterwards.
    stop = build_stop(config, rules, extra_stop)
    limit = config.upstream_stop_limit
    post = PostContext(
        crlf="\r\n" in request.prefix or "\r\n" in request.suffix,
        cursor_line=prefix[prefix.rfind("\n") + 1 :],
        line_rest=suffix.split("\n", 1)[0],
        stop=stop[limit:],
    )
    return FimPrompt(prompt, stop[:limit], post)


def split_prompt(prompt: str, config: PreprocessingConfig) -> FimInput | None:
    """Take apart a prompt carrying the served model's or another family's FIM markers; None if it has none."""
    served = compile_template(config.template)
    for template, extra in ((served, ()), *_KNOWN):
        if not all(token in prompt for token in template.tokens):
            continue
        parts = template.split(prompt)
        if parts is None:
            continue
        preamble, prefix, suffix = parts
        if template != served:
            preamble = _drop_tokens(preamble, (*template.tokens, *extra))
        return FimInput(prefix=prefix, suffix=suffix, preamble=preamble)
    return None


def _drop_tokens(text: str, tokens: Iterable[str]) -> str:
    """Another family's special tokens turned into line breaks, so its context reads as plain text."""
    for token in tokens:
        text = text.replace(token, "\n")
    return text.lstrip("\n")


@dataclass(frozen=True)
class FimRewrite:
    """An OpenAI completion rebuilt for the served model: the new body, and what post-processing needs."""

    body: dict[str, Any]
    built: FimPrompt


def fim_input_of(prompt: object, suffix: str | None, config: PreprocessingConfig) -> FimInput | None:
    """What a completion asks to fill in: `suffix`, or FIM markers in the prompt; None for a plain prompt."""
    if not isinstance(prompt, str):
        if suffix is not None:
            raise InvalidRequest(
                "suffix works with a single string prompt only; send one prompt per request", param="suffix"
            )
        return None
    request = split_prompt(prompt, config)
    if request is None and suffix is not None:
        return FimInput(prefix=prompt, suffix=suffix)
    return request


def rewrite_completion(
    request: CompletionRequest, data: Mapping[str, Any], config: PreprocessingConfig
) -> FimRewrite | None:
    """A completion's body with the served model's FIM prompt in place of `suffix` or foreign markers.

    vLLM rejects `suffix`, so it is left out; max_tokens is capped by the config. None for a plain prompt.
    """
    found = fim_input_of(request.prompt, request.suffix, config)
    if found is None:
        return None
    client_stop = (request.stop,) if isinstance(request.stop, str) else tuple(request.stop or ())
    built = build_prompt(found, config, client_stop)
    body = {key: value for key, value in data.items() if key != "suffix"}
    body["prompt"] = built.prompt
    body["stop"] = list(built.stop)
    body["max_tokens"] = min(request.max_tokens or config.max_tokens.default, config.max_tokens.maximum)
    body.setdefault("temperature", config.temperature)
    return FimRewrite(body, built)
