"""Open-loop load for benchmarks/serve_load.py: one process of an asyncio (aiohttp) client that sends
SQuAD questions to ``POST /v1/qa`` on a fixed schedule, whatever the server's answers take.

    python benchmarks/serve_client.py --url http://127.0.0.1:8000 --questions Q.json --rate 500 \\
        --duration-s 15 --start-at EPOCH_S --out result.json [--share J --shares P] [--per-request 1] \\
        [--offset 0] [--grace-s 10]

Request ``i`` is due at ``start_at + i / rate``; it is sent then (a new connection when all of the
pool's are busy, up to ``--connections``), so a slow server cannot slow the arrivals down the way a
closed loop of users (Locust's ``constant_throughput``) lets it. Latency runs from the due time, not
from the send, so time a request spent waiting for the client is counted against the result
(no coordinated omission); how late sends left (``send_lag``) shows whether the client kept up.
Several processes started with the same ``--start-at`` and ``--rate`` share one schedule
(``--share J --shares P``: requests J, J + P, ...); serve_load.py merges their results. With
``--per-request K > 1`` each request carries K questions as ``{"inputs": [...]}``.

Writes ``--out``: {"latencies_ms": [...] (OK answers), "statuses": {code: count}, "errors":
{what: count}, "sent", "questions", "first_due", "last_done", "span_s", "send_lag_ms": {"p50", "p99",
"max"}}.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections import Counter
from pathlib import Path


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


async def offer(url: str, bodies: list[bytes], *, rate: float, duration_s: float, start_at: float,
                connections: int, grace_s: float, questions_per_body: int, share: int = 0, shares: int = 1) -> dict:
    """Send ``bodies`` round-robin on a schedule of ``rate`` requests/s from ``start_at``
    (time.time()) for ``duration_s``: this process's share of it, requests ``share``, ``share +
    shares``, ... The answers' latencies run from each request's due time; they are awaited until
    ``grace_s`` after the schedule's end."""
    import aiohttp

    latencies, lags = [], []
    statuses, errors = Counter(), Counter()
    last_done = 0.0
    connector = aiohttp.TCPConnector(limit=connections, force_close=False, ttl_dns_cache=None)
    timeout = aiohttp.ClientTimeout(total=duration_s + grace_s)
    headers = {"content-type": "application/json"}
    count = max(1, round(rate * duration_s))  # of the whole schedule, all processes together
    # The schedule is in perf_counter() time, started at the shared wall-clock instant.
    origin = time.perf_counter() + (start_at - time.time())

    async def one(body: bytes, due: float) -> None:
        nonlocal last_done
        lags.append((time.perf_counter() - due) * 1e3)
        try:
            async with session.post(url, data=body, headers=headers) as r:
                payload = await r.read()
                status = r.status
        except asyncio.TimeoutError:
            errors["client timeout"] += 1
            return
        except aiohttp.ClientError as exc:
            errors[type(exc).__name__] += 1
            return
        done = time.perf_counter()
        last_done = max(last_done, done)
        statuses[str(status)] += 1
        if status != 200:
            errors[f"HTTP {status}"] += 1
        elif b'"answer"' not in payload:
            errors["no answer in the response"] += 1
        else:
            latencies.append((done - due) * 1e3)

    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        tasks = []
        for n, i in enumerate(range(share, count, shares)):
            due = origin + i / rate
            wait = due - time.perf_counter()
            if wait > 0:
                await asyncio.sleep(wait)
            tasks.append(asyncio.create_task(one(bodies[n % len(bodies)], due)))
        # Answers are awaited until ``grace_s`` past the schedule's end; later ones count as unanswered.
        _, late = await asyncio.wait(tasks, timeout=max(0.0, origin + duration_s + grace_s - time.perf_counter()))
        for task in late:
            task.cancel()
        if late:
            errors["unanswered within the grace period"] += len(late)
            await asyncio.wait(late)
    return {"latencies_ms": latencies, "statuses": dict(statuses), "errors": dict(errors), "sent": len(tasks),
            "questions": len(tasks) * questions_per_body, "first_due": origin, "last_done": last_done,
            # The schedule's length, or longer when answers came after it ended.
            "span_s": max(duration_s, (last_done - origin) if last_done else 0.0),
            "send_lag_ms": {"p50": _percentile(lags, 50), "p99": _percentile(lags, 99), "max": max(lags, default=0.0)}}


def request_bodies(questions: list[dict], per_request: int, offset: int) -> list[bytes]:
    """JSON bodies of ``per_request`` consecutive questions each, starting at ``offset``."""
    order = questions[offset % len(questions):] + questions[:offset % len(questions)]
    if per_request <= 1:
        return [json.dumps(q).encode() for q in order]
    return [json.dumps({"inputs": order[i:i + per_request]}).encode()
            for i in range(0, len(order) - per_request + 1, per_request)] or \
        [json.dumps({"inputs": order[:per_request]}).encode()]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--url", required=True, help="the server's base URL")
    p.add_argument("--questions", type=Path, required=True, help="JSON list of {question, context}")
    p.add_argument("--rate", type=float, required=True, help="requests/s of the schedule (all processes together)")
    p.add_argument("--share", type=int, default=0, help="this process's index among --shares")
    p.add_argument("--shares", type=int, default=1, help="processes sharing the schedule")
    p.add_argument("--duration-s", type=float, required=True)
    p.add_argument("--start-at", type=float, default=None, help="time.time() of the first request")
    p.add_argument("--per-request", type=int, default=1, help="questions per request")
    p.add_argument("--offset", type=int, default=0, help="first question (processes start apart)")
    p.add_argument("--connections", type=int, default=1024, help="open connections at most")
    p.add_argument("--grace-s", type=float, default=10.0,
                   help="answers are awaited until this long after the schedule ends (later: unanswered)")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    bodies = request_bodies(json.loads(args.questions.read_text()), args.per_request, args.offset)
    start_at = args.start_at if args.start_at is not None else time.time() + 0.5
    try:
        from uvloop import run
    except ImportError:
        run = asyncio.run
    result = run(offer(args.url.rstrip("/") + "/v1/qa", bodies, rate=args.rate, duration_s=args.duration_s,
                       start_at=start_at, connections=args.connections, grace_s=args.grace_s, share=args.share,
                       shares=args.shares, questions_per_body=max(1, args.per_request)))
    args.out.write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
