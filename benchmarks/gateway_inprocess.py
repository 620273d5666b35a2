"""The gateway's own cost per text turn, in process, with Rasa replaced by an instant canned reply.

Runs the real FastAPI app (middleware, auth, conversation lock, state store, language detection,
helpdesk lookups, reply model) through httpx's ASGI transport on a throw-away SQLite state
directory, and times `--turns` turns of one conversation after a warm-up. Prints the mean ms per
turn and the mean ms of each database call the turn makes (wrapped timers): what the gateway adds
to a Rasa turn, without HTTP sockets. Compare two commits by running it in each (same machine).

Usage: .venv/bin/python benchmarks/gateway_inprocess.py [--turns 300]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def timed(spent: dict[str, float], name: str, function: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap `function` so its wall time accumulates in `spent[name]` (seconds)."""

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            spent[name] += time.perf_counter() - started

    return wrapper


async def run(turns: int) -> dict[str, float]:
    """Time `turns` turns; return {"turn": ms, "<call>": ms per turn, ...}."""
    import httpx

    from bot.dsp import helpdesk
    from bot.gateway import app as gateway_app
    from bot.gateway import language, store

    spent: dict[str, float] = collections.defaultdict(float)
    store.load = timed(spent, "store.load", store.load)
    store.save = timed(spent, "store.save", store.save)
    language.detect = timed(spent, "language.detect", language.detect)
    helpdesk.active_ticket = timed(spent, "helpdesk.active_ticket", helpdesk.active_ticket)

    async def instant_rasa(self: Any, state: Any, message: str) -> list[dict[str, Any]]:
        return [{"recipient_id": state.conversation_id, "text": "Voici vos documents."}]

    gateway_app.Gateway.rasa_turn = instant_rasa
    headers = {"Authorization": f"Bearer {os.environ['GATEWAY_API_KEY']}"}
    async with gateway_app.lifespan(gateway_app.app):
        transport = httpx.ASGITransport(app=gateway_app.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:

            async def turn() -> None:
                response = await client.post("/v1/conversations/bench-1/messages", headers=headers,
                                             json={"text": "montre-moi mes documents s'il te plaît"})
                response.raise_for_status()

            for _ in range(20):
                await turn()
            spent.clear()
            started = time.perf_counter()
            for _ in range(turns):
                await turn()
            total = time.perf_counter() - started
    return {"turn": total / turns * 1000, **{name: s / turns * 1000 for name, s in sorted(spent.items())}}


def main(argv: list[str] | None = None) -> int:
    """Set up a throw-away state directory, run, print."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=300)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="mydsp-gw-") as state:
        os.environ.update({"DSP_STATE_DIR": state, "GATEWAY_API_KEY": "k" * 32})
        os.environ.pop("DSP_DATABASE_URL", None)
        import logging

        logging.disable(logging.INFO)
        figures = asyncio.run(run(args.turns))
    print(f"gateway's own work per text turn (Rasa instant): {figures.pop('turn'):.2f} ms")
    for name, ms in figures.items():
        print(f"  {name}: {ms:.2f} ms per turn")
    return 0


if __name__ == "__main__":
    sys.exit(main())
