"""Latency the Telegram layer adds per message, measured against the gateway alone in the same run.

Starts the services (action server, Rasa server, gateway) on free loopback ports with a fresh state
directory, then the Telegram front end in this process against the fake Bot API of the tests
(`tests/fake_telegram.py`, loopback). Every message is sent both ways, alternately, each time in a
new conversation:

- gateway: `POST /v1/conversations/{id}/messages`, timed until the reply is read;
- Telegram: the update is queued at the fake Bot API → getUpdates (long polling) → python-telegram-bot
  → handlers → gateway → Rasa → sendChatAction / sendMessage calls back to the fake; timed until
  the bot has finished with the update (its last sendMessage answered), and until its first reply.

Prints p50 / p95 / mean of each, the bot's own time per message (Telegram path minus the time its
gateway call took: fetching the update, dispatch, rendering, the Bot API calls), the added latency
(per-pair differences, which also carry Rasa's variation between two turns) and the p50 ratio, and
writes `benchmarks/results/telegram_latency.json`. The real Bot API adds the network round
trips to Telegram (getUpdates delivery, each sendMessage), which a loopback fake cannot show.

Usage: .venv/bin/python benchmarks/telegram_latency.py [--rounds 40]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import httpx  # noqa: E402

from bot.launcher import Services  # noqa: E402
from bot.telegram.app import build_application, quiet_loggers  # noqa: E402
from bot.telegram.gateway import GatewayClient, Reply  # noqa: E402
from bot.telegram.handlers import ALLOWED_UPDATES  # noqa: E402
from bot.telegram.settings import TelegramSettings  # noqa: E402
from tests.fake_telegram import FakeBotApi, free_port  # noqa: E402
from tests.support import test_env  # noqa: E402

MESSAGES = ["bonjour", "que peux-tu faire", "merci beaucoup", "comment voir mes images ?",
            "je veux parler à quelqu'un"]


class TimedGateway(GatewayClient):
    """The bot's gateway client, timing each call by conversation (to split the bot's own time out)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.spent: dict[str, float] = {}

    async def _post(self, path: str, **kwargs: Any) -> Reply:
        started = time.monotonic()
        try:
            return await super()._post(path, **kwargs)
        finally:
            conversation = path.split("/")[3]
            self.spent[conversation] = self.spent.get(conversation, 0.0) + time.monotonic() - started


def percentile(values: list[float], fraction: float) -> float:
    """Return the `fraction` percentile (nearest rank) of `values`."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(fraction * len(ordered)) - 1))]


def summary(values: list[float]) -> dict[str, float]:
    """p50, p95 and mean, in milliseconds."""
    return {"p50_ms": round(percentile(values, 0.50) * 1000, 1), "p95_ms": round(percentile(values, 0.95) * 1000, 1),
            "mean_ms": round(statistics.fmean(values) * 1000, 1), "n": len(values)}


async def measure(gateway_url: str, key: str, rounds: int, warmup: int) -> dict[str, Any]:
    """Send the messages both ways, alternately; return the timings."""
    token = f"{uuid.uuid4().int % 10**9}:AA{uuid.uuid4().hex}"
    fake = FakeBotApi(token).start()
    settings = TelegramSettings(token=token, gateway_url=gateway_url, gateway_api_key=key, api_base_url=fake.url,
                                poll_timeout_s=30)
    gateway = TimedGateway(gateway_url, key)
    app = build_application(settings, gateway)
    quiet_loggers()
    done: dict[int, asyncio.Future[float]] = {}
    processor = app.update_processor
    original = processor.do_process_update

    async def timed(update: Any, coroutine: Any) -> None:
        try:
            await original(update, coroutine)
        finally:
            future = done.get(getattr(update, "update_id", -1))
            if future is not None and not future.done():
                future.set_result(time.monotonic())

    processor.do_process_update = timed  # type: ignore[method-assign]
    chat_ids = itertools.count(700_000_000)
    direct: list[float] = []
    telegram: list[float] = []
    first_reply: list[float] = []
    added: list[float] = []
    own: list[float] = []
    client = httpx.AsyncClient(base_url=gateway_url, headers={"Authorization": f"Bearer {key}"}, timeout=120)
    await app.initialize()
    await app.start()
    await app.updater.start_polling(poll_interval=0, timeout=30, allowed_updates=ALLOWED_UPDATES)

    async def via_gateway(words: str) -> float:
        started = time.monotonic()
        response = await client.post(f"/v1/conversations/bench-{uuid.uuid4().hex[:12]}/messages", json={"text": words})
        response.raise_for_status()
        return time.monotonic() - started

    async def via_telegram(words: str) -> tuple[float, float, float]:
        chat_id = next(chat_ids)
        update = {"update_id": fake.new_update_id(), "message": {
            "message_id": 1, "date": int(time.time()), "text": words,
            "chat": {"id": chat_id, "type": "private", "first_name": "Bench"},
            "from": {"id": chat_id, "is_bot": False, "first_name": "Bench", "language_code": "fr"}}}
        future: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        done[update["update_id"]] = future
        mark = fake.mark()
        started = time.monotonic()
        fake.push(update)
        finished = await asyncio.wait_for(future, 120)
        replies = fake.calls_to("sendMessage", chat_id, mark)
        assert replies and all(call.status == 200 for call in replies), "the bot did not answer"
        return finished - started, replies[0].at - started, finished - started - gateway.spent[f"tg-{chat_id}"]

    try:
        for number, words in enumerate(MESSAGES * (rounds + warmup)):
            first_gateway = number % 2 == 0  # alternate who goes first
            if first_gateway:
                d = await via_gateway(words)
                t, f, o = await via_telegram(words)
            else:
                t, f, o = await via_telegram(words)
                d = await via_gateway(words)
            if number >= warmup * len(MESSAGES):
                direct.append(d)
                telegram.append(t)
                first_reply.append(f)
                added.append(t - d)
                own.append(o)
    finally:
        await app.updater.stop()
        await app.stop()
        await app.shutdown()
        await gateway.aclose()
        await client.aclose()
        fake.stop()
    return {"gateway": summary(direct), "telegram_done": summary(telegram),
              "telegram_first_reply": summary(first_reply),
              "telegram_layer_own": summary(own),
              "added_p50_ms": round(statistics.median(added) * 1000, 1),
              "added_p95_ms": round(percentile(added, 0.95) * 1000, 1),
              "ratio_p50": round(percentile(telegram, 0.5) / percentile(direct, 0.5), 3)}


def main() -> int:
    """Start the services, measure, print and save the result."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=40, help="rounds of the 5 messages (default 40)")
    parser.add_argument("--warmup", type=int, default=2, help="rounds not counted (default 2)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="mydsp-bench-") as state:
        env = test_env(Path(state))
        extra = {k: env[k] for k in ("DSP_STATE_DIR", "DSP_DATABASE_URL", "GATEWAY_API_KEY")}
        extra["RASA_AUTH_TOKEN"] = "bench-" + uuid.uuid4().hex[:8]
        services = Services(gateway_port=free_port(), rasa_port=free_port(), actions_port=free_port(), env=extra,
                            telegram=False)
        print("Starting the services (Rasa loads its model)...", flush=True)
        services.start(timeout_s=420)
        try:
            result = asyncio.run(measure(services.gateway_url, extra["GATEWAY_API_KEY"], args.rounds, args.warmup))
        finally:
            services.stop()
    print(f"messages per path: {result['gateway']['n']} (fresh conversation each, same texts, alternating)")
    for name in ("gateway", "telegram_done", "telegram_first_reply", "telegram_layer_own"):
        row = result[name]
        print(f"  {name:22s} p50 {row['p50_ms']:7.1f} ms   p95 {row['p95_ms']:7.1f} ms   mean {row['mean_ms']:7.1f} ms")
    print(f"  added by Telegram layer  p50 {result['added_p50_ms']:.1f} ms   p95 {result['added_p95_ms']:.1f} ms   "
          f"ratio p50 {result['ratio_p50']:.3f}")
    out = REPO / "benchmarks" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "telegram_latency.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
