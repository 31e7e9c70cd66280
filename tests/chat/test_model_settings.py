"""The model settings are checked at start-up, with errors that say what is wrong."""

from __future__ import annotations

import pytest
from pydantic import ValidationError
from pydantic_settings import SettingsError

from chat_service.core.config import ModelEndpointSettings, Settings

ENDPOINT = '{"base_url": "http://127.0.0.1:9/v1", "model": "small", "api_key": "sk-x"}'


def test_the_fallback_chain_is_a_json_list_of_endpoints_optionally_ending_offline(monkeypatch):
    monkeypatch.setenv("CHAT_LLM_FALLBACKS", f'[{ENDPOINT}, {{"base_url": "https://b.example/v1", "model": "m"}}, "offline"]')
    chain = Settings().llm_fallbacks
    assert chain[0] == ModelEndpointSettings(base_url="http://127.0.0.1:9/v1", model="small", api_key="sk-x")
    assert chain[1] == ModelEndpointSettings(base_url="https://b.example/v1", model="m")
    assert chain[2] == "offline"


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("CHAT_LLM_FALLBACKS", '[{"base_url": "http://x/v1"}]', "llm_fallbacks.0.endpoint.model\n  Field required"),
        ("CHAT_LLM_FALLBACKS", '[{"base_url": "http://x/v1", "model": "m", "key": "k"}]', "Extra inputs are not permitted"),
        ("CHAT_LLM_FALLBACKS", '[{"base_url": "ftp://x", "model": "m"}]', "llm_fallbacks.0.endpoint.base_url"),
        ("CHAT_LLM_FALLBACKS", f'["offline", {ENDPOINT}]', '"offline" may only be the last entry'),
        ("CHAT_LLM_FALLBACKS", '["offlne"]', "Input should be 'offline'"),
        ("CHAT_LLM_FALLBACKS", '{"base_url": "http://x/v1"}', "Input should be a valid list"),
        ("CHAT_LLM_MAX_RETRIES", "1", "CHAT_LLM_MAX_RETRIES is gone"),
        ("CHAT_LLM_POLICY__BACKOFF_INITIAL", "5", "need 0 < backoff_initial <= backoff_max"),
        ("CHAT_LLM_POLICY__ATEMPTS", "2", "llm_policy.atempts\n  Extra inputs are not permitted"),
        ("CHAT_LLM_MAX_CONCURRENCY", "0", "llm_max_concurrency"),
    ],
)
def test_bad_model_settings_fail_start_up_clearly(monkeypatch, variable, value, message):
    monkeypatch.setenv(variable, value)
    with pytest.raises(ValidationError) as raised:
        Settings()
    assert message in str(raised.value)


def test_a_fallback_list_that_is_not_json_names_the_variable(monkeypatch):
    monkeypatch.setenv("CHAT_LLM_FALLBACKS", "[not json")
    with pytest.raises(SettingsError, match='"llm_fallbacks"'):
        Settings()
