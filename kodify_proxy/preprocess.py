"""The completions preprocessing config (COMPLETIONS_PREPROCESSING_CONFIG): its schema and its loader."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from kodify_proxy.errors import describe_validation
from kodify_proxy.upstreams import ConfigError

log = logging.getLogger("kodify_proxy.preprocess")

PACKAGE_DIR = Path(__file__).resolve().parent
REPO_DIR = PACKAGE_DIR.parent
SHIPPED_DIR = PACKAGE_DIR / "preprocess_configs"
_PLACEHOLDERS = ("{prefix}", "{suffix}")


class PreprocessConfigError(ConfigError):
    """The preprocessing config is missing or wrong; the message names the path and the problem (stops startup)."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Budget(_Strict):
    """How much text goes into a prompt, in characters; trimming keeps whole lines nearest the cursor."""

    prefix_chars: int = Field(gt=0, description="text before the cursor")
    suffix_chars: int = Field(ge=0, description="text after the cursor")
    snippets_chars: int = Field(ge=0, description="snippet bodies (declarations, related files) together")


class MaxTokens(_Strict):
    """`max_tokens` when a request gives none, and the most a request may ask for."""

    default: int = Field(gt=0)
    maximum: int = Field(gt=0)

    @model_validator(mode="after")
    def _default_within_maximum(self) -> MaxTokens:
        if self.default > self.maximum:
            raise ValueError(f"default ({self.default}) must not exceed maximum ({self.maximum})")
        return self


class LanguageRules(_Strict):
    """Per-language facts: how a line comment starts (for snippets) and extra stop sequences."""

    line_comment: str = Field(min_length=1)
    stop: tuple[str, ...] = ()


class Postprocess(_Strict):
    """Rules applied to every generated completion."""

    strip_special_tokens: bool = True
    stop_at_block_end: bool = True
    drop_blank: bool = True


class PreprocessingConfig(_Strict):
    """One model family's FIM prompt format, budgets, stops and post-processing rules."""

    name: str = Field(min_length=1)
    description: str = ""
    template: str
    special_tokens: tuple[str, ...] = Field(min_length=1)
    budget: Budget
    max_tokens: MaxTokens
    temperature: float = Field(default=0.1, ge=0, description="for FIM requests that give none")
    stop: tuple[str, ...] = ()
    upstream_stop_limit: int = Field(default=4, ge=0, description="stop sequences the upstream accepts")
    languages: dict[str, LanguageRules] = {}
    postprocess: Postprocess = Postprocess()

    @field_validator("template")
    @classmethod
    def _one_of_each_placeholder(cls, template: str) -> str:
        for placeholder in _PLACEHOLDERS:
            if template.count(placeholder) != 1:
                raise ValueError(f"must contain {placeholder} exactly once, e.g. '<PRE>{{prefix}}<SUF>{{suffix}}<MID>'")
        first, second = sorted(_PLACEHOLDERS, key=template.index)
        if not template.split(first, 1)[1].split(second, 1)[0].strip(" "):
            raise ValueError("needs a token between {prefix} and {suffix}, or the two can't be told apart")
        return template

    @field_validator("stop", "special_tokens")
    @classmethod
    def _no_empty_strings(cls, values: tuple[str, ...]) -> tuple[str, ...]:
        if any(not value for value in values):
            raise ValueError("must not contain an empty string")
        return values

    @field_validator("languages")
    @classmethod
    def _lowercase_language_ids(cls, languages: dict[str, LanguageRules]) -> dict[str, LanguageRules]:
        wrong = [name for name in languages if name != name.lower()]
        if wrong:
            raise ValueError(f"language ids are lowercase VS Code ids (e.g. 'python'), got {wrong}")
        return languages


def shipped_configs() -> list[str]:
    """Names of the configs shipped with kodify-proxy (preprocess_configs/*.json)."""
    return sorted(path.stem for path in SHIPPED_DIR.glob("*.json"))


def resolve_config_path(raw: str, cwd: Path | None = None) -> Path:
    """An absolute path as is; a relative one against the CWD, then the repository, then the package."""
    path = Path(raw).expanduser()
    if path.is_absolute():
        return path
    candidates = [(cwd or Path.cwd()) / path, REPO_DIR / path, PACKAGE_DIR / path]
    return next((candidate for candidate in candidates if candidate.is_file()), candidates[0])


def parse_config(text: str, path: Path) -> PreprocessingConfig:
    """Parse config JSON; raise PreprocessConfigError naming the file and the JSON or schema error."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise PreprocessConfigError(f"{path}: not valid JSON: {exc}") from None
    try:
        return PreprocessingConfig.model_validate(data)
    except ValidationError as exc:
        raise PreprocessConfigError(
            f"{path}: invalid preprocessing config: {describe_validation(exc)} "
            "(the schema is in docs/autocompletion.md)"
        ) from None


def load_config(raw: str, cwd: Path | None = None) -> PreprocessingConfig:
    """Read the config COMPLETIONS_PREPROCESSING_CONFIG names."""
    path = resolve_config_path(raw, cwd)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PreprocessConfigError(
            f"COMPLETIONS_PREPROCESSING_CONFIG={raw}: file not found ({path}); give an existing path or one "
            f"of the shipped configs: {', '.join(f'preprocess_configs/{n}.json' for n in shipped_configs())}"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise PreprocessConfigError(f"{path}: cannot read the preprocessing config: {exc}") from None
    return parse_config(text, path)


def load_shipped(name: str) -> PreprocessingConfig:
    """One shipped config by name (e.g. 'qwen'); Tabby requests use 'qwen' when no config is set."""
    path = SHIPPED_DIR / f"{name}.json"
    return parse_config(path.read_text(encoding="utf-8"), path)


def load_configured(raw: str | None) -> PreprocessingConfig | None:
    """The config COMPLETIONS_PREPROCESSING_CONFIG names (at serve and check), or None when it is unset."""
    if raw is None:
        log.info(
            "COMPLETIONS_PREPROCESSING_CONFIG is unset: /v1/completions prompts pass through unchanged; "
            "Tabby requests use preprocess_configs/qwen.json"
        )
        return None
    config = load_config(raw)
    log.info("Completions preprocessing: %s (%s)", resolve_config_path(raw), config.name)
    return config
