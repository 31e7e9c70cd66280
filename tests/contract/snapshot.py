"""The API contract, frozen as JSON: both services' OpenAPI schemas in their default configuration.

After a reviewed change to the contract, rewrite the snapshots with
`uv run python -m tests.contract.snapshot` and commit the diff with the change.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from analytics_service.core.config import Settings as AnalyticsSettings
from analytics_service.main import create_app as create_analytics
from chat_service.core.config import Settings as ChatSettings
from chat_service.main import create_app as create_chat

SNAPSHOTS = Path(__file__).parent / "snapshots"


def current_schemas() -> dict[str, dict[str, Any]]:
    """Each service's schema as it serves it; the settings the schema states are pinned to their defaults."""
    return {
        "chat": create_chat(ChatSettings(max_text_chars=8000)).openapi(),
        "analytics": create_analytics(AnalyticsSettings(api_token=None)).openapi(),
    }


def render(schema: dict[str, Any]) -> str:
    return json.dumps(schema, indent=2, ensure_ascii=False) + "\n"


def snapshot_path(service: str) -> Path:
    return SNAPSHOTS / f"{service}.openapi.json"


def main() -> None:
    SNAPSHOTS.mkdir(exist_ok=True)
    for service, schema in current_schemas().items():
        snapshot_path(service).write_text(render(schema))
        print(f"wrote {snapshot_path(service)}")


if __name__ == "__main__":
    main()
