"""ENV files read exactly as Docker Compose reads them: `KEY=value`, the guide's `KEY: value`, quotes and `${...}`.

A port of compose-go's dotenv parser and its `${...}` substitution (compose-spec/compose-go v2.9.1,
`dotenv/parser.go` and `template/template.go`; Docker Compose 2.40 runs them), so `kodify-proxy check --env-file`
reads the values `docker compose up` gives the containers. tests/test_env_file.py holds the two against the real
Compose binary. Unlike Compose, which stops at the first line it can't read, `read_env_file` goes on past it and
reports every such line by number.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

Lookup = Callable[[str], str | None]

_SPACE = "\t\v\f\r \x85\xa0"  # compose-go's isSpace: blanks, not the line break
_KEY_PUNCTUATION = "_.-[]"
_EXPORT = re.compile(r"export[\t\n\f\r ]+")  # Go's \s is ASCII only
_ESCAPE = re.compile(r"\\(?:[abcfnrtv$\"\\]|0\d{0,3})")
_UNQUOTE = {"a": "\a", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v", '"': '"', "\\": "\\"}
_TEMPLATE = re.compile(
    r"\$(?i:(?P<escaped>\$)|(?P<named>[_a-z][_a-z0-9]*)|{(?:(?P<braced>[_a-z][_a-z0-9]*(?::?[-+?](.*))?)}|(?P<invalid>)))"
)
_OPERATORS = (":?", "?", ":-", "-", ":+", "+")


class EnvFileError(ValueError):
    """A statement Compose can't read (`read_env_file` reports it with the number of the line it starts on)."""


class TemplateError(ValueError):
    """A `${...}` that is malformed, or a `${NAME:?reason}` whose variable is missing."""


@dataclass(frozen=True)
class EnvFile:
    """What an ENV file sets, in file order, and every line that could not be read."""

    values: dict[str, str]
    errors: list[str]


def read_env_file(path: Path, lookup: Lookup) -> EnvFile:
    """Read `path` as Compose's `env_file:` does; `lookup` answers `${NAME}` and bare `NAME` lines (the environment)."""
    return parse_env(path.read_text(encoding="utf-8"), lookup)


def parse_env(text: str, lookup: Lookup) -> EnvFile:
    """Every assignment of `text`; a line Compose would refuse is reported and skipped, and reading goes on."""
    values: dict[str, str] = {}
    errors: list[str] = []
    parser = _Parser()
    rest = text.removeprefix("\ufeff")
    while rest := parser.statement_start(rest):
        start = parser.line
        try:
            rest = parser.statement(rest, values, lookup)
        except (EnvFileError, TemplateError) as exc:
            # Compose counts a multi-line quoted value's lines before it says "unterminated"; the start is clearer.
            errors.append(f"line {start}: {exc}")
            rest = parser.skip_line(rest, start)
    return EnvFile(values, errors)


def _is_go_space(char: str) -> bool:
    """Go's unicode.IsSpace."""
    return char in "\t\n\v\f\r \x85\xa0" or (char > "\xff" and char.isspace())


def _strip_right(text: str) -> str:
    end = len(text)
    while end and _is_go_space(text[end - 1]):
        end -= 1
    return text[:end]


def _is_key_char(char: str) -> bool:
    return char in _KEY_PUNCTUATION or unicodedata.category(char)[0] in "LN"


class _Parser:
    """compose-go's dotenv parser: one statement (`KEY=value`, `KEY: value`, `export KEY=value`, `KEY`) at a time."""

    def __init__(self) -> None:
        self.line = 1

    def statement_start(self, src: str) -> str:
        """`src` from its next statement on, past blank space and `#` comment lines ("" at the end)."""
        while True:
            pos = 0
            while pos < len(src) and _is_go_space(src[pos]):
                self.line += src[pos] == "\n"
                pos += 1
            src = src[pos:]
            if not src.startswith("#"):
                return src
            newline = src.find("\n")
            if newline < 0:
                return ""
            src = src[newline:]

    def statement(self, src: str, out: dict[str, str], lookup: Lookup) -> str:
        """Read one statement into `out`; what follows it."""
        key, rest, inherited = self.key_name(src)
        if " " in key:
            raise EnvFileError("key cannot contain a space")
        if inherited:
            value = lookup(key)
            if value is not None:
                out[key] = value
            return rest
        value, rest = self.value(rest, out, lookup)
        out[key] = value
        return rest

    def key_name(self, src: str) -> tuple[str, str, bool]:
        """The key, what follows its `=`/`:`, and whether the line was a bare `KEY` (taken from the environment)."""
        if _EXPORT.match(src):
            src = src.removeprefix("export").lstrip(_SPACE)
        key, offset, inherited = "", 0, False
        for i, char in enumerate(src):
            if char in _SPACE:
                continue
            if char in "=:\n":
                key, offset, inherited = src[:i], i + 1, char == "\n"
                break
            if not _is_key_char(char):
                line = src.split("\n")[0]
                raise EnvFileError(f"unexpected character {char!r} in variable name {line!r}")
        if inherited and " " not in key:
            self.line += 1
        return _strip_right(key), src[offset:].lstrip(_SPACE), inherited

    def value(self, src: str, out: Mapping[str, str], lookup: Lookup) -> tuple[str, str]:
        """The value (unquoted to the line's end less a ` #` comment; or quoted, maybe over lines); what follows."""
        if not src.startswith(("'", '"')):
            value, _, rest = src.partition("\n")
            self.line += 1
            value = _strip_right(value.split(" #", 1)[0])
            return substitute(value, _mapping(out, lookup)), rest
        return self.quoted(src, out, lookup)

    def quoted(self, src: str, out: Mapping[str, str], lookup: Lookup) -> tuple[str, str]:
        """A quoted value: `\\` keeps the quote char; double quotes also unescape `\\n`-style escapes and `${...}`."""
        quote, escaped, chars = src[0], False, []
        for i in range(1, len(src)):
            char = src[i]
            self.line += char == "\n"
            if char != quote:
                if not escaped and char == "\\":
                    escaped = True
                    continue
                if escaped:
                    escaped = False
                    chars.append("\\")
                chars.append(char)
                continue
            if escaped:
                escaped = False
                chars.append(char)
                continue
            value = "".join(chars)
            if quote == '"':
                value = substitute(expand_escapes(value), _mapping(out, lookup))
            return value, src[i + 1 :]
        raise EnvFileError(f"unterminated quoted value {src.split(chr(10))[0]}")

    def skip_line(self, src: str, start: int) -> str:
        """Past the line where a statement that failed began (reading goes on at the next one)."""
        newline = src.find("\n")
        self.line = start + 1
        return "" if newline < 0 else src[newline + 1 :]


def _mapping(out: Mapping[str, str], lookup: Lookup) -> Lookup:
    """`${NAME}` in a value: the environment first, then the file's own earlier lines (compose-go's order)."""

    def get(name: str) -> str | None:
        value = lookup(name)
        return value if value is not None else out.get(name)

    return get


def expand_escapes(value: str) -> str:
    """Double-quoted escapes: `\\n`, `\\t`, `\\"`, `\\\\`, octal `\\0NNN`; `\\$` stays a literal `$`."""

    def replace(match: re.Match[str]) -> str:
        text = match.group()
        if text == "\\$":
            return "$$"
        if text.startswith("\\0"):
            digits = text[2:]
            octal = len(digits) == 3 and all(d in "01234567" for d in digits) and int(digits, 8) < 256
            # compose-go drops the `0` before it tries the octal escape, and keeps the text so changed if it fails.
            return chr(int(digits, 8)) if octal else "\\" + digits
        return _UNQUOTE[text[1]]

    return _ESCAPE.sub(replace, value)


def substitute(template: str, mapping: Lookup) -> str:
    """Compose's interpolation: `$$`, `$NAME`, `${NAME}`, `${NAME:-default}`, `-`, `:+`, `+`, `:?reason`, `?`."""
    problems: list[str] = []

    def replace(match: re.Match[str]) -> str:
        try:
            return _replacement(match.group(), mapping)
        except TemplateError as exc:
            problems.append(str(exc).replace("{template}", template))
            return ""

    result = _TEMPLATE.sub(replace, template)
    if problems:
        raise TemplateError(problems[0])
    return result


def _replacement(text: str, mapping: Lookup) -> str:
    closing = _closing_brace(text)
    rest = ""
    if closing > -1:
        text, rest = text[: closing + 1], text[closing + 1 :]
    match = _TEMPLATE.match(text)
    assert match is not None  # `text` is a match of _TEMPLATE cut at its first balanced `}`: it still starts with one
    if match["escaped"]:
        return "$"
    name = match["named"] or match["braced"]
    if not name:
        raise TemplateError("invalid template: {template}")
    if match["braced"]:
        applied = _apply_operator(name, mapping)
        if applied is not None:
            return applied + substitute(rest, mapping)
    return mapping(name) or ""


def _closing_brace(text: str) -> int:
    depth, i = 0, 0
    while i < len(text):
        if text[i] == "}":
            depth -= 1
            if depth == 0:
                return i
        if text[i] == "{":
            depth += 1
            i += 1
        i += 1
    return -1


def _apply_operator(braced: str, mapping: Lookup) -> str | None:
    """`${NAME<op>word}` by its first operator, or None when there is none."""
    found = [(braced.find(op), op) for op in _OPERATORS if op in braced]
    if not found:
        return None
    _, operator = min(found, key=lambda pair: pair[0])
    name, _, word = braced.partition(operator)
    word = substitute(word, mapping)
    value = mapping(name)
    if operator in (":-", "-"):
        return word if value is None or (operator == ":-" and value == "") else value
    if operator in (":+", "+"):
        return word if value is not None and (operator == "+" or value != "") else (value or "")
    if value is None or (operator == ":?" and value == ""):
        raise TemplateError(f"required variable {name} is missing a value" + (f": {word}" if word else ""))
    return value
