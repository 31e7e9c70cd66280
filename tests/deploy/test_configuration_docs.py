"""Every setting of both services is in docs/configuration.md, so no setting goes undocumented.

The names come from the code, not from a list kept by hand: the pydantic settings models
(nested models as `PREFIX_FIELD__NESTED`, aliases under their first name), and the variables
the packages read from the environment themselves (`os.environ.get("X")`, and the OTEL_*
names servicekit.tracing reads).
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import AliasChoices, BaseModel
from pydantic_settings import BaseSettings

from analytics_service.core.config import Settings as AnalyticsSettings
from chat_service.core.config import Settings as ChatSettings
from servicekit.connections import ServerSettings

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "configuration.md"
PACKAGES = ("chat_service", "analytics_service", "servicekit", "resilience")
SETTINGS: tuple[type[BaseSettings], ...] = (ChatSettings, AnalyticsSettings, ServerSettings)


def _nested_model(annotation: object) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return None


def settings_variables(settings: type[BaseSettings]) -> Iterator[str]:
    """The environment variable of every field, walking nested models with the `__` delimiter."""
    prefix = settings.model_config.get("env_prefix", "").upper()
    delimiter = settings.model_config.get("env_nested_delimiter")
    for name, field in settings.model_fields.items():
        alias = field.validation_alias
        if isinstance(alias, AliasChoices):
            alias = alias.choices[0]
        top = alias.upper() if isinstance(alias, str) else f"{prefix}{name.upper()}"
        yield top
        nested = _nested_model(field.annotation)
        if nested is not None and delimiter:
            for inner in nested.model_fields:
                yield f"{top}{delimiter}{inner.upper()}"


def environ_reads() -> Iterator[str]:
    """Names read straight from the environment: `environ.get("X")`, `getenv("X")`, OTEL_* constants."""
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
                    func = node.func
                    reads = (isinstance(func, ast.Attribute) and func.attr == "get" and "environ" in ast.unparse(func.value)) or (
                        isinstance(func, ast.Attribute | ast.Name) and ast.unparse(func).endswith("getenv")
                    )
                    if reads and isinstance(node.args[0].value, str):
                        yield node.args[0].value
                elif (
                    isinstance(node, ast.Constant)
                    and isinstance(node.value, str)
                    and re.fullmatch(r"OTEL_[A-Z0-9_]*[A-Z0-9]", node.value)
                ):
                    yield node.value


def documented() -> set[str]:
    return set(re.findall(r"`([A-Z][A-Z0-9_]*)`", DOC.read_text()))


ALL_VARIABLES = sorted({name for settings in SETTINGS for name in settings_variables(settings)} | set(environ_reads()))


def test_the_walk_finds_nested_aliased_and_environ_variables():
    # The walk itself must see every kind of name, or the test below could pass on nothing.
    assert {
        "CHAT_ANALYTICS_URL",
        "CHAT_ANALYTICS_READ__DEADLINE",
        "CHAT_ADMISSION__QUEUE_TIMEOUT",
        "CHAT_LLM_POLICY__ATTEMPTS",
        "OPENAI_API_KEY",
        "ANALYTICS_DATABASE_URL",
        "SERVICEKIT_REQUEST_READ_TIMEOUT",
        "OTEL_SERVICE_NAME",
        "PROMETHEUS_MULTIPROC_DIR",
    } <= set(ALL_VARIABLES)


@pytest.mark.parametrize("name", ALL_VARIABLES)
def test_every_setting_is_documented(name):
    assert name in documented(), f"{name} is a setting but docs/configuration.md does not list it as `{name}`"


def _aliases() -> set[str]:
    return {
        choice.upper()
        for settings in SETTINGS
        for field in settings.model_fields.values()
        if isinstance(field.validation_alias, AliasChoices)
        for choice in field.validation_alias.choices
        if isinstance(choice, str)
    }


def test_every_documented_setting_of_ours_exists():
    # The other direction: a setting renamed or removed in the code must leave the page too.
    ours = {n for n in documented() if n.startswith(("CHAT_", "ANALYTICS_", "SERVICEKIT_", "OPENAI_")) and not n.endswith("_")}
    assert ours - set(ALL_VARIABLES) - _aliases() == set()
