"""Start both services in the foreground (offline model, SQLite): `uv run python -m load_tests.serve`.

Ctrl-C stops both cleanly (SIGTERM, so chat flushes its outbox first).
"""

from __future__ import annotations

import argparse
import os
import signal
import time

from .processes import ServiceProcess


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--chat-port", type=int, default=8000)
    parser.add_argument("--analytics-port", type=int, default=8001)
    parser.add_argument("--no-demo-data", action="store_true", help="do not load alice=5, bob=3")
    args = parser.parse_args()
    analytics = ServiceProcess(
        "analytics_service.main:app",
        port=args.analytics_port,
        env={"ANALYTICS_SEED_DEMO_DATA": "false" if args.no_demo_data else "true"},
    )
    chat = ServiceProcess(
        "chat_service.main:app",
        port=args.chat_port,
        env={"CHAT_ANALYTICS_URL": os.environ.get("CHAT_ANALYTICS_URL", analytics.url)},
    )
    stop = False

    def request_stop(*_: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, request_stop)
    try:
        analytics.start()
        chat.start()
        print(f"analytics on {analytics.url}, chat on {chat.url} (Ctrl-C stops both)", flush=True)
        while not stop and all(p.process and p.process.poll() is None for p in (chat, analytics)):
            time.sleep(0.2)
    except KeyboardInterrupt:
        pass
    finally:
        chat.stop()
        analytics.stop()


if __name__ == "__main__":
    main()
