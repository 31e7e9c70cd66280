"""Load the tutorial's demo data (alice: 5 messages, bob: 3): `python -m analytics_service.seed`.

The message ids are fixed, so loading twice changes nothing.
"""

from __future__ import annotations

import asyncio

from .core.config import Settings
from .storage import Store, StoreRecord, open_store

DEMO_COUNTS = {"alice": 5, "bob": 3}
DEMO_TIMESTAMP = "2025-04-06T12:00:00+00:00"


async def load_demo_data(store: Store) -> None:
    await store.record(
        [
            StoreRecord(user, f"demo-{user}-{n}", DEMO_TIMESTAMP)
            for user, count in DEMO_COUNTS.items()
            for n in range(1, count + 1)
        ]
    )


async def _main() -> None:
    settings = Settings()
    store = open_store(settings.database_url)
    await store.start()
    try:
        await load_demo_data(store)
        for user in DEMO_COUNTS:
            print(f"{user}: {await store.count(user)} messages")
    finally:
        await store.close()


if __name__ == "__main__":
    asyncio.run(_main())
