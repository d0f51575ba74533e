"""Post-processing of FIM completions, whole (`postprocess`) or streamed chunk by chunk (`StreamCut`): special
tokens dropped, the upstream's stops and the config's rules applied, CRLF restored. Pure; tests/test_fim.py pins it."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from kodify_proxy.fim import PostContext, compile_template
from kodify_proxy.preprocess import PreprocessingConfig


def _cut_at_first(text: str, needles: Iterable[str]) -> str:
    """`text` up to the first occurrence of any needle."""
    return text[: min((i for i in (text.find(n) for n in needles) if i >= 0), default=len(text))]


def _strip_leading(text: str, tokens: Sequence[str]) -> str:
    """`text` without the special tokens it starts with."""
    stripped = True
    while stripped:
        stripped = False
        for token in tokens:
            if token and text.startswith(token):
                text, stripped = text[len(token) :], True
    return text


def _cut_at_special(text: str, tokens: Sequence[str]) -> str:
    """Drop special tokens a completion starts with, then end it at the first one left."""
    return _cut_at_first(_strip_leading(text, tokens), tokens)


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" \t"))


def end_at_block(text: str, post: PostContext) -> str:
    """One line when the cursor is mid-line; else cut where a line falls below the cursor line's indentation."""
    if post.line_rest.strip():
        return text.split("\n", 1)[0]
    level = _indent(post.cursor_line)
    lines = text.split("\n")
    for index in range(1, len(lines)):
        if lines[index].strip() and _indent(lines[index]) < level:
            kept = lines[:index]
            while len(kept) > 1 and not kept[-1].strip():
                kept.pop()
            return "\n".join(kept)
    return text


def postprocess(text: str, post: PostContext, config: PreprocessingConfig) -> str | None:
    """A completion cleaned by the config's rules; None when nothing useful is left."""
    rules = config.postprocess
    text = text.replace("\r\n", "\n")
    if rules.strip_special_tokens:
        text = _cut_at_special(text, (*config.special_tokens, *compile_template(config.template).tokens))
    text = _cut_at_first(text, post.stop)
    if rules.stop_at_block_end:
        text = end_at_block(text, post)
    if rules.drop_blank and not text.strip():
        return None
    return text.replace("\n", "\r\n") if post.crlf else text


class StreamCut:
    """One streamed completion cut at its first needle (stop string or special token), chunk by chunk.

    Text goes out as soon as no needle can start in it: only a tail that could begin a needle (or a CR that could
    begin a CRLF) is held back. A needle is matched where it starts, as `postprocess` cuts a whole completion.
    """

    def __init__(self, needles: Sequence[str], leading: Sequence[str] = (), crlf: bool = False) -> None:
        self._needles = tuple(needle for needle in needles if needle)
        self._leading = tuple(token for token in leading if token)
        self._longest = max((len(needle) for needle in self._needles), default=0)
        self._crlf = crlf
        self._held = ""
        self._at_start = bool(self._leading)
        self.stopped = False

    def feed(self, text: str, final: bool = False) -> str:
        """The text that can go out once `text` arrived (all of it when `final`); `stopped` once a needle matched."""
        if self.stopped:
            return ""
        held = (self._held + text).replace("\r\n", "\n")
        if self._at_start:
            held = _strip_leading(held, self._leading)
            if not final and any(token.startswith(held) for token in self._leading):
                self._held = held
                return ""
            self._at_start = False
        safe = len(held) if final else self._undecided_from(held)
        match = _first_at(held, self._needles)
        if match is not None and match <= safe:
            self.stopped, out, self._held = True, held[:match], ""
        else:
            out, self._held = held[:safe], held[safe:]
        return out.replace("\n", "\r\n") if self._crlf else out

    def _undecided_from(self, text: str) -> int:
        """Where the tail that may still become a needle or a CRLF starts (len(text) when there is none)."""
        for start in range(max(0, len(text) - self._longest + 1), len(text)):
            tail = text[start:]
            if any(len(needle) > len(tail) and needle.startswith(tail) for needle in self._needles):
                return start
        return len(text) - 1 if text.endswith("\r") else len(text)


def _first_at(text: str, needles: Iterable[str]) -> int | None:
    """Where the first needle in `text` starts; None when there is none."""
    return min((i for i in (text.find(needle) for needle in needles) if i >= 0), default=None)


def build_stream_cut(post: PostContext, config: PreprocessingConfig) -> StreamCut:
    """The streamable part of `postprocess` for one choice: special tokens, stops beyond the upstream's, one line."""
    rules = config.postprocess
    special = (*config.special_tokens, *compile_template(config.template).tokens) if rules.strip_special_tokens else ()
    one_line = ("\n",) if rules.stop_at_block_end and post.line_rest.strip() else ()
    return StreamCut((*special, *post.stop, *one_line), leading=special, crlf=post.crlf)
