"""kodify_proxy.fim and kodify_proxy.preprocess: exact prompts for every shipped config and language."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from kodify_proxy import fim
from kodify_proxy.errors import InvalidRequest
from kodify_proxy.fim import post as fim_post
from kodify_proxy.preprocess import (
    Budget,
    PreprocessConfigError,
    PreprocessingConfig,
    load_config,
    load_shipped,
    parse_config,
    shipped_configs,
)
from kodify_proxy.protocol import CompletionRequest, validate

# DeepSeek-Coder's markers: FULLWIDTH VERTICAL LINE (U+FF5C) and LOWER ONE EIGHTH BLOCK (U+2581).
FB, FH, FE = "<\uff5cfim\u2581begin\uff5c>", "<\uff5cfim\u2581hole\uff5c>", "<\uff5cfim\u2581end\uff5c>"
CONFIGS = ("qwen", "deepseek", "starcoder2", "codellama", "codestral")
# Each config's prompt layout, written out by hand.
LAYOUTS = {
    "qwen": "<|fim_prefix|>{p}<|fim_suffix|>{s}<|fim_middle|>",
    "deepseek": FB + "{p}" + FH + "{s}" + FE,
    "starcoder2": "<fim_prefix>{p}<fim_suffix>{s}<fim_middle>",
    "codellama": "<PRE> {p} <SUF>{s} <MID>",
    "codestral": "[SUFFIX]{s}[PREFIX]{p}",
}
COMMENTS = {
    "python": "#",
    "javascript": "//",
    "typescript": "//",
    "java": "//",
    "csharp": "//",
    "go": "//",
    "rust": "//",
    "kotlin": "//",
    "c": "//",
    "cpp": "//",
    "php": "//",
    "ruby": "#",
    "lua": "--",
    "shell": "#",
}


def layout(config: str, prefix: str, suffix: str) -> str:
    return re.sub(r"\{[ps]\}", lambda m: prefix if m.group() == "{p}" else suffix, LAYOUTS[config])


def small(name: str, prefix: int = 20, suffix: int = 10, snippets: int = 12) -> PreprocessingConfig:
    return load_shipped(name).model_copy(
        update={"budget": Budget(prefix_chars=prefix, suffix_chars=suffix, snippets_chars=snippets)}
    )


# --- the shipped configs -------------------------------------------------------------------------------------------


def test_every_config_ships_and_validates() -> None:
    assert shipped_configs() == sorted(CONFIGS)
    for name in CONFIGS:
        config = load_shipped(name)
        assert set(COMMENTS) <= set(config.languages), name
        assert config.max_tokens.default == 64 and config.max_tokens.maximum == 256
        assert {lang: rules.line_comment for lang, rules in config.languages.items()} == COMMENTS


EXACT = [
    ("qwen", "<|fim_prefix|>def add(a, b):\n    return <|fim_suffix|>\n\nprint(add(1, 2))\n<|fim_middle|>"),
    ("deepseek", f"{FB}def add(a, b):\n    return {FH}\n\nprint(add(1, 2))\n{FE}"),
    ("starcoder2", "<fim_prefix>def add(a, b):\n    return <fim_suffix>\n\nprint(add(1, 2))\n<fim_middle>"),
    ("codellama", "<PRE> def add(a, b):\n    return  <SUF>\n\nprint(add(1, 2))\n <MID>"),
    ("codestral", "[SUFFIX]\n\nprint(add(1, 2))\n[PREFIX]def add(a, b):\n    return "),
]


@pytest.mark.parametrize(("config", "expected"), EXACT)
def test_basic_prompt_per_config(config: str, expected: str) -> None:
    built = fim.build_prompt(
        fim.FimInput("def add(a, b):\n    return ", "\n\nprint(add(1, 2))\n", "python"), load_shipped(config)
    )
    assert built.prompt == expected
    assert (built.post.crlf, built.post.cursor_line, built.post.line_rest) == (False, "    return ", "")


EDGES = [
    # (name, prefix, suffix, expected prefix part, expected suffix part, crlf)
    ("empty prefix", "", "x = 1\n", "", "x = 1\n", False),
    ("empty suffix", "x = ", "", "x = ", "", False),
    ("both empty", "", "", "", "", False),
    ("crlf", "a = 1\r\nb = ", "\r\nc = 3\r\n", "a = 1\nb = ", "\nc = 3\n", True),
    ("non-ascii", "# Привет 世界 🙂\nя = 'é", "'\n", "# Привет 世界 🙂\nя = 'é", "'\n", False),
    # budget 20/10: whole lines nearest the cursor
    (
        "over budget",
        "line one\nline two\nline three\nx = ",
        "\ny = 2\nz = 3\nw = 4\n",
        "line three\nx = ",
        "\ny = 2\n",
        False,
    ),
    ("cursor line over budget", "short\n" + "v" * 30, "s" * 15 + "\nnext\n", "v" * 20, "s" * 10, False),
    (
        "non-ascii over budget",
        "ёёёё\nжжжж\n世界世界世界世界\nπ = ",
        "\n😀😀😀😀\n🙂🙂🙂🙂🙂🙂\n",
        "жжжж\n世界世界世界世界\nπ = ",
        "\n😀😀😀😀\n",
        False,
    ),
]


@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize(
    ("name", "prefix", "suffix", "want_prefix", "want_suffix", "crlf"), EDGES, ids=[e[0] for e in EDGES]
)
def test_edge_prompts(
    config: str, name: str, prefix: str, suffix: str, want_prefix: str, want_suffix: str, crlf: bool
) -> None:
    built = fim.build_prompt(fim.FimInput(prefix, suffix, "python"), small(config))
    assert built.prompt == layout(config, want_prefix, want_suffix)
    assert built.post.crlf is crlf


def test_exact_over_budget_qwen() -> None:
    built = fim.build_prompt(fim.FimInput("line one\nline two\nline three\nx = ", "\ny = 2\nz = 3\n"), small("qwen"))
    assert built.prompt == "<|fim_prefix|>line three\nx = <|fim_suffix|>\ny = 2\n<|fim_middle|>"


SNIPPETS = (
    fim.Snippet("src/util.py", "def helper(x):\n\n    return x"),
    fim.Snippet("src/other.py", "VALUE = 1"),
)


@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("language", sorted(COMMENTS))
def test_snippets_as_comments_per_language(config: str, language: str) -> None:
    c = COMMENTS[language]
    built = fim.build_prompt(fim.FimInput("x = ", "\n", language, SNIPPETS), load_shipped(config))
    comments = (
        f"{c} Path: src/util.py\n{c} def helper(x):\n{c}\n{c}     return x\n{c}\n"
        f"{c} Path: src/other.py\n{c} VALUE = 1\n"
    )
    assert built.prompt == layout(config, comments + "x = ", "\n")


def test_snippets_within_budget_in_priority_order() -> None:
    snippets = (fim.Snippet("a.py", "aaaaaaaa"), fim.Snippet("b.py", "bbbbbbbbbb"), fim.Snippet("c.py", "cccc"))
    built = fim.build_prompt(fim.FimInput("x", "", "python", snippets), small("qwen", snippets=12))
    assert built.prompt == (
        "<|fim_prefix|># Path: a.py\n# aaaaaaaa\n#\n# Path: c.py\n# cccc\nx<|fim_suffix|><|fim_middle|>"
    )


def test_snippets_skipped_for_unknown_language() -> None:
    built = fim.build_prompt(fim.FimInput("x", "", "brainfuck", SNIPPETS), load_shipped("qwen"))
    assert built.prompt == "<|fim_prefix|>x<|fim_suffix|><|fim_middle|>"
    assert built.stop + built.post.stop == ("\n\n", *load_shipped("qwen").special_tokens)


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("typescriptreact", "typescript"),
        ("javascriptreact", "javascript"),
        ("CSharp", "csharp"),
        ("c#", "csharp"),
        ("golang", "go"),
        ("Python", "python"),
        (None, None),
        ("", None),
    ],
)
def test_language_aliases(given: str | None, expected: str | None) -> None:
    assert fim.normalize_language(given) == expected


def test_stop_sequences_python_qwen() -> None:
    built = fim.build_prompt(fim.FimInput("x", "", "python"), load_shipped("qwen"), extra_stop=["\n\n", "END"])
    assert built.stop == ("\n\n", "END", "\ndef ", "\nclass ")  # vLLM takes 4 (VLLM_MAX_STOP_STRINGS)
    assert built.post.stop == (
        "\nimport ",
        "\nfrom ",
        "\n#",
        "\nif __name__",
        "<|fim_prefix|>",
        "<|fim_suffix|>",
        "<|fim_middle|>",
        "<|fim_pad|>",
        "<|repo_name|>",
        "<|file_sep|>",
        "<|endoftext|>",
        "<|im_start|>",
        "<|im_end|>",
    )


@pytest.mark.parametrize("language", ["python", "csharp", "java", "go", "javascript", "typescript"])
@pytest.mark.parametrize("config", CONFIGS)
def test_language_stops_present(config: str, language: str) -> None:
    cfg = load_shipped(config)
    built = fim.build_prompt(fim.FimInput("x", "", language), cfg)
    stop = built.stop + built.post.stop
    assert len(built.stop) == 4
    assert set(cfg.languages[language].stop) <= set(stop) and len(cfg.languages[language].stop) >= 5
    assert set(cfg.special_tokens) <= set(stop)


# --- trimming ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "budget", "expected"),
    [
        ("abc", 3, "abc"),
        ("one\ntwo\nthree", 9, "two\nthree"),
        ("one\ntwo\nthree", 8, "three"),
        ("one\ntwo\n", 4, "two\n"),
        ("one\nlonger line\n", 3, ""),
        ("abcdef", 4, "cdef"),
    ],
)
def test_trim_prefix(text: str, budget: int, expected: str) -> None:
    assert fim.trim_prefix(text, budget) == expected


@pytest.mark.parametrize(
    ("text", "budget", "expected"),
    [
        ("abc", 3, "abc"),
        ("one\ntwo\nthree", 8, "one\ntwo\n"),
        ("one\ntwo\nthree", 7, "one\n"),
        ("abcdef\nx", 4, "abcd"),
        ("", 0, ""),
    ],
)
def test_trim_suffix(text: str, budget: int, expected: str) -> None:
    assert fim.trim_suffix(text, budget) == expected


# --- taking prompts apart ------------------------------------------------------------------------------------------

FOREIGN = [
    ("starcoder", "<fim_prefix>def f():\n    <fim_suffix>\n\nf()<fim_middle>", "", "def f():\n    ", "\n\nf()"),
    ("qwen", "<|fim_prefix|>a = <|fim_suffix|>\nb<|fim_middle|>", "", "a = ", "\nb"),
    ("deepseek", f"{FB}a = {FH}\nb{FE}", "", "a = ", "\nb"),
    ("codellama", "<PRE> a =  <SUF>\nb <MID>", "", "a = ", "\nb"),
    ("codellama unspaced", "<PRE>a = <SUF>\nb<MID>", "", "a = ", "\nb"),
    ("codestral", "[SUFFIX]\nb[PREFIX]a = ", "", "a = ", "\nb"),
    ("seeded middle", "<fim_prefix>a<fim_suffix>c<fim_middle>b", "", "ab", "c"),
    (
        "starcoder repo context",
        "<file_sep>util.py\nX = 1\n<fim_prefix>a<fim_suffix>c<fim_middle>",
        "util.py\nX = 1\n",
        "a",
        "c",
    ),
]


@pytest.mark.parametrize(("name", "prompt", "preamble", "prefix", "suffix"), FOREIGN, ids=[f[0] for f in FOREIGN])
def test_split_foreign_prompts_for_qwen(name: str, prompt: str, preamble: str, prefix: str, suffix: str) -> None:
    assert fim.split_prompt(prompt, load_shipped("qwen")) == fim.FimInput(prefix, suffix, preamble=preamble)


def test_served_family_preamble_kept_verbatim() -> None:
    prompt = "<|repo_name|>demo\n<|file_sep|>a.py\n<|fim_prefix|>x<|fim_suffix|>y<|fim_middle|>"
    parts = fim.split_prompt(prompt, load_shipped("qwen"))
    assert parts == fim.FimInput("x", "y", preamble="<|repo_name|>demo\n<|file_sep|>a.py\n")
    assert fim.build_prompt(parts, load_shipped("qwen")).prompt == prompt


@pytest.mark.parametrize("served", CONFIGS)
@pytest.mark.parametrize("sent", CONFIGS)
def test_every_family_rebuilt_for_every_served_model(served: str, sent: str) -> None:
    source = fim.build_prompt(fim.FimInput("def f(x):\n    return ", "\n\nf(1)\n"), load_shipped(sent)).prompt
    parts = fim.split_prompt(source, load_shipped(served))
    assert parts == fim.FimInput("def f(x):\n    return ", "\n\nf(1)\n")
    rebuilt = fim.build_prompt(parts, load_shipped(served)).prompt
    assert rebuilt == layout(served, "def f(x):\n    return ", "\n\nf(1)\n")


def test_plain_prompt_is_not_fim() -> None:
    assert fim.split_prompt("def f():\n    return {prefix} <b>", load_shipped("qwen")) is None


# --- the OpenAI body -----------------------------------------------------------------------------------------------


def rewrite(data: dict[str, Any], config: str) -> fim.FimRewrite | None:
    return fim.rewrite_completion(validate(CompletionRequest, data), data, load_shipped(config))


def test_openai_suffix_folded_and_dropped() -> None:
    data: dict[str, Any] = {
        "model": "m",
        "prompt": "def add(a, b):\n    ",
        "suffix": "\n\nprint(add(1, 2))",
        "max_tokens": 1000,
        "stop": "\n\n\n",
        "top_k": 5,
    }
    done = rewrite(data, "qwen")
    assert done is not None
    assert done.body == {
        "model": "m",
        "prompt": "<|fim_prefix|>def add(a, b):\n    <|fim_suffix|>\n\nprint(add(1, 2))<|fim_middle|>",
        "max_tokens": 256,
        "stop": ["\n\n\n", "\n\n", "<|fim_prefix|>", "<|fim_suffix|>"],
        "top_k": 5,
        "temperature": 0.1,  # the config's default when the client gives none
    }
    assert "suffix" in data and data["max_tokens"] == 1000  # the client's body is left as it came
    assert done.built.post.stop == load_shipped("qwen").special_tokens[2:]


def test_openai_continue_starcoder_prompt_rebuilt_for_deepseek() -> None:
    data: dict[str, Any] = {
        "model": "m",
        "prompt": "<fim_prefix>x = <fim_suffix>\n<fim_middle>",
        "stop": ["<fim_prefix>", "\n\n"],
        "temperature": 0.7,
    }
    done = rewrite(data, "deepseek")
    assert done is not None
    assert done.body["temperature"] == 0.7
    assert done.body["prompt"] == f"{FB}x = {FH}\n{FE}"
    assert done.body["max_tokens"] == 64
    assert done.body["stop"] == ["<fim_prefix>", "\n\n", *load_shipped("deepseek").special_tokens[:2]]


def test_openai_plain_prompt_untouched() -> None:
    assert rewrite({"model": "m", "prompt": "Once upon a time", "max_tokens": 1000}, "qwen") is None
    assert rewrite({"model": "m", "prompt": [1, 2, 3]}, "qwen") is None  # token ids are never rebuilt


def test_openai_suffix_needs_one_string_prompt() -> None:
    with pytest.raises(InvalidRequest) as caught:
        rewrite({"model": "m", "prompt": ["a", "b"], "suffix": "y"}, "qwen")
    assert caught.value.param == "suffix" and "single string prompt" in caught.value.message


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"prompt": "x", "suffix": 3}, "suffix"),
        ({"prompt": "x", "suffix": "y", "stop": 5}, "stop"),
        ({"prompt": "x", "suffix": "y", "max_tokens": "many"}, "max_tokens"),
    ],
)
def test_openai_bad_fields_named_by_the_typed_request(body: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        validate(CompletionRequest, {"model": "m", **body})
    assert caught.value.param == param


# --- post-processing -----------------------------------------------------------------------------------------------

POST = [
    ("plain", "fib(n - 1) + fib(n - 2)", "    return ", "", "fib(n - 1) + fib(n - 2)"),
    ("special token ends it", "x + 1<|endoftext|>garbage", "    return ", "", "x + 1"),
    ("leading special token", "<|fim_middle|>x + 1<|file_sep|>b.py", "    return ", "", "x + 1"),
    ("block end", "x\n        y = 2\n\nprint(1)", "        return ", "", "x\n        y = 2"),
    ("same level kept", "x\n    y()\n", "    return ", "", "x\n    y()\n"),
    ("mid-line keeps one line", "a, b\nc = 1", "print(", ")", "a, b"),
    ("whitespace only", "  \n\t", "x = ", "", None),
    ("empty", "", "x = ", "", None),
    ("only special", "<|endoftext|>", "x = ", "", None),
    ("non-ascii", "'héllo wörld'", "s = ", "", "'héllo wörld'"),
]


@pytest.mark.parametrize(("name", "text", "cursor_line", "line_rest", "expected"), POST, ids=[p[0] for p in POST])
def test_postprocess(name: str, text: str, cursor_line: str, line_rest: str, expected: str | None) -> None:
    post = fim.PostContext(crlf=False, cursor_line=cursor_line, line_rest=line_rest)
    assert fim_post.postprocess(text, post, load_shipped("qwen")) == expected


def test_postprocess_applies_stops_beyond_the_upstream_limit() -> None:
    built = fim.build_prompt(fim.FimInput("x = 1\n", ""), load_shipped("qwen"), extra_stop=["A", "B", "C", "D", "E"])
    assert built.stop == ("A", "B", "C", "D") and built.post.stop[:2] == ("E", "\n\n")
    assert fim_post.postprocess("y = 2\nzEnd", built.post, load_shipped("qwen")) == "y = 2\nz"
    assert fim_post.postprocess("y = 2\n\nw = 3", built.post, load_shipped("qwen")) == "y = 2"


def test_postprocess_crlf_round_trip() -> None:
    built = fim.build_prompt(fim.FimInput("if x:\r\n    ", "\r\n"), load_shipped("qwen"))
    assert "\r" not in built.prompt
    assert fim_post.postprocess("a()\n    b()", built.post, load_shipped("qwen")) == "a()\r\n    b()"
    assert fim_post.postprocess("a()\r\n    b()", built.post, load_shipped("qwen")) == "a()\r\n    b()"


def test_postprocess_rules_can_be_switched_off() -> None:
    config = load_shipped("qwen")
    off = config.model_copy(
        update={
            "postprocess": config.postprocess.model_copy(
                update={"strip_special_tokens": False, "stop_at_block_end": False, "drop_blank": False}
            )
        }
    )
    post = fim.PostContext(crlf=False, cursor_line="    ", line_rest="")
    assert fim_post.postprocess("x<|endoftext|>\ny", post, off) == "x<|endoftext|>\ny"
    assert fim_post.postprocess("  ", post, off) == "  "


# --- streamed completions: the incremental cut ---------------------------------------------------------------------

QWEN_SPECIAL = ("<|fim_middle|>", "<|endoftext|>", "<|file_sep|>")
STOPS = ("<STOP5>", "\n#")
# (name, needles, leading tokens, crlf, chunks, what goes out after each chunk (the last one final), stopped)
STREAM = [
    ("no match", STOPS, (), False, ["def f", "(x):", " ret"], ["def f", "(x):", " ret"], False),
    ("stop split across chunks", STOPS, (), False, ["a = 1<ST", "OP5>junk", "more"], ["a = 1", "", ""], True),
    ("stop in one chunk", STOPS, (), False, ["a<STOP5>b", "c"], ["a", ""], True),
    ("partial stop that is not one", STOPS, (), False, ["a<ST", "ART>"], ["a", "<START>"], False),
    (
        "special token split",
        QWEN_SPECIAL + STOPS,
        QWEN_SPECIAL,
        False,
        ["x + 1<|endo", "ftext|>", "garbage"],
        ["x + 1", "", ""],
        True,
    ),
    (
        "leading special token dropped",
        QWEN_SPECIAL,
        QWEN_SPECIAL,
        False,
        ["<|fim_", "middle|><|endoftext|", ">x", " + 1<|file_sep|>b.py"],
        ["", "", "x", " + 1"],
        True,
    ),
    ("stop at the very start", STOPS, (), False, ["<STOP5>", "x"], ["", ""], True),
    ("stop at the start, split", STOPS, (), False, ["<", "STOP5>", "x"], ["", "", ""], True),
    ("newline stop held until decided", STOPS, (), False, ["a\n", "b", "\n", "#c"], ["a", "\nb", "", ""], True),
    ("held tail flushed at the end", STOPS, (), False, ["a", "<STO"], ["a", "<STO"], False),
    ("CRLF restored", STOPS, (), True, ["b()\n", "    c()\n", "#x"], ["b()", "\r\n    c()", ""], True),
    ("CRLF from the model, split", STOPS, (), True, ["b()\r", "\n#x"], ["b()", ""], True),
    ("CR kept until its LF", (), (), False, ["a\r", "\nb\r"], ["a", "\nb\r"], False),
    ("earlier longer needle wins", ("abcd", "c"), (), False, ["xab", "cd!"], ["x", ""], True),
    ("later full needle waits for an earlier partial", ("abcd", "c"), (), False, ["xab", "ce"], ["x", "ab"], True),
    ("no needles", (), (), False, ["a", "<STOP5>"], ["a", "<STOP5>"], False),
]


@pytest.mark.parametrize(
    ("name", "needles", "leading", "crlf", "chunks", "outputs", "stopped"), STREAM, ids=[s[0] for s in STREAM]
)
def test_stream_cut(
    name: str,
    needles: tuple[str, ...],
    leading: tuple[str, ...],
    crlf: bool,
    chunks: list[str],
    outputs: list[str],
    stopped: bool,
) -> None:
    cut = fim_post.StreamCut(needles, leading=leading, crlf=crlf)
    got = [cut.feed(chunk, final=i == len(chunks) - 1) for i, chunk in enumerate(chunks)]
    assert got == outputs and cut.stopped is stopped


def test_stream_cut_agrees_with_postprocess() -> None:
    config = load_shipped("qwen")
    post = fim.PostContext(crlf=True, cursor_line="    ", line_rest="", stop=("<STOP5>", "\n\n"))
    text = "<|fim_middle|>a()\r\n    b()<STOP5>c\n\n<|endoftext|>"
    for size in (1, 2, 3, 7):
        cut = fim_post.build_stream_cut(post, config)
        pieces = [text[i : i + size] for i in range(0, len(text), size)]
        streamed = "".join(cut.feed(piece, final=i == len(pieces) - 1) for i, piece in enumerate(pieces))
        assert streamed == fim_post.postprocess(text, post, config) == "a()\r\n    b()"


def test_stream_cuts_of_interleaved_choices() -> None:
    cuts = {0: fim_post.StreamCut(STOPS), 1: fim_post.StreamCut(STOPS)}
    chunks = [(0, "one<ST"), (1, "two"), (0, "OP5>x"), (1, "<STO"), (1, "P"), (0, "y"), (1, "!")]
    out = {0: "", 1: ""}
    for index, text in chunks:
        out[index] += cuts[index].feed(text)
    out[1] += cuts[1].feed("", final=True)
    assert out == {0: "one", 1: "two<STOP!"}
    assert cuts[0].stopped and not cuts[1].stopped


@pytest.mark.parametrize(
    ("line_rest", "strip", "text", "expected"),
    [
        ("", True, "a\nb<|endoftext|>c", "a\nb"),
        (")", True, "a, b\nc", "a, b"),  # text after the cursor on its line: one line, as postprocess
        ("", False, "a<|endoftext|>b<STOP5>c", "a<|endoftext|>b"),  # strip_special_tokens off: only stops
    ],
)
def test_build_stream_cut_follows_the_config(line_rest: str, strip: bool, text: str, expected: str) -> None:
    config = load_shipped("qwen")
    config = config.model_copy(
        update={"postprocess": config.postprocess.model_copy(update={"strip_special_tokens": strip})}
    )
    cut = fim_post.build_stream_cut(fim.PostContext(False, "x = ", line_rest, stop=("<STOP5>",)), config)
    assert cut.feed(text, final=True) == expected


# --- the config loader ---------------------------------------------------------------------------------------------


def test_missing_config_names_path_and_shipped_ones(tmp_path: Path) -> None:
    with pytest.raises(PreprocessConfigError) as caught:
        load_config("preprocess_configs/nope.json", cwd=tmp_path)
    message = str(caught.value)
    assert "COMPLETIONS_PREPROCESSING_CONFIG=preprocess_configs/nope.json: file not found" in message
    assert str(tmp_path / "preprocess_configs/nope.json") in message
    assert "preprocess_configs/qwen.json" in message


def test_malformed_json_names_path_and_error(tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_text('{"name": "x",\n  "template": }')
    with pytest.raises(PreprocessConfigError) as caught:
        load_config(str(path))
    assert str(caught.value) == f"{path}: not valid JSON: Expecting value: line 2 column 15 (char 28)"


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"template": "<a>{prefix}<b><c>"}, "template: Value error, must contain {suffix} exactly once"),
        ({"template": "<a>{prefix} {suffix}"}, "needs a token between {prefix} and {suffix}"),
        (
            {"budget": {"prefix_chars": 0, "suffix_chars": 1, "snippets_chars": 1}},
            "budget.prefix_chars: Input should be",
        ),
        ({"max_tokens": {"default": 300, "maximum": 256}}, "default (300) must not exceed maximum (256)"),
        ({"temperature": -1}, "temperature: Input should be greater than or equal to 0"),
        ({"stop": ["", "x"]}, "stop: Value error, must not contain an empty string"),
        ({"languages": {"Python": {"line_comment": "#"}}}, "language ids are lowercase"),
        ({"unknown_key": 1}, "unknown_key: Extra inputs are not permitted"),
    ],
)
def test_schema_errors_named(tmp_path: Path, change: dict[str, Any], problem: str) -> None:
    data = json.loads((Path(__file__).parent.parent / "preprocess_configs" / "qwen.json").read_text())
    data.update(change)
    path = tmp_path / "cfg.json"
    with pytest.raises(PreprocessConfigError) as caught:
        parse_config(json.dumps(data), path)
    assert str(caught.value).startswith(f"{path}: invalid preprocessing config: ")
    assert problem in str(caught.value)


def test_relative_path_resolves_against_cwd_then_repo(tmp_path: Path) -> None:
    assert load_config("preprocess_configs/qwen.json", cwd=tmp_path).name == "qwen2.5-coder"
    local = tmp_path / "preprocess_configs"
    local.mkdir()
    data = json.loads((Path(__file__).parent.parent / "preprocess_configs" / "qwen.json").read_text())
    (local / "qwen.json").write_text(json.dumps({**data, "name": "local-qwen"}))
    assert load_config("preprocess_configs/qwen.json", cwd=tmp_path).name == "local-qwen"


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("src/app.py", "python"),
        ("file:///home/dev/project/src/App.tsx", "typescript"),
        ("C:\\work\\Main.java", "java"),
        ("lib/parser.rs", "rust"),
        ("notes/README.md", "md"),
        ("Makefile", None),
        (".bashrc", None),
        ("", None),
        (None, None),
    ],
)
def test_path_language(path: str | None, expected: str | None) -> None:
    assert fim.path_language(path) == expected
    assert fim.language_label(fim.path_language(path), load_shipped("qwen")) == (
        None if expected is None else expected if expected != "md" else "other"
    )
