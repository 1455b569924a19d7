"""Locust users for benchmarks/serve_load.py: each posts SQuAD dev questions to /v1/qa at a fixed rate.

Environment (set by serve_load.py):
    BERTRT_QUESTIONS: a JSON file, a list of {"question", "context"}.
    BERTRT_USER_RPS: requests per second each user offers (Locust's constant_throughput), so the
        offered load is users x this, as long as no request takes longer than 1 / this.
"""

from __future__ import annotations

import json
import os
import random

from locust import constant_throughput, task
from locust.contrib.fasthttp import FastHttpUser

QUESTIONS = json.loads(open(os.environ["BERTRT_QUESTIONS"], encoding="utf-8").read())


class Asker(FastHttpUser):
    wait_time = constant_throughput(float(os.environ.get("BERTRT_USER_RPS", "1")))

    def on_start(self):
        self.next = random.randrange(len(QUESTIONS))

    @task
    def ask(self):
        body = QUESTIONS[self.next % len(QUESTIONS)]
        self.next += 1
        with self.client.post("/v1/qa", json=body, name="/v1/qa", catch_response=True) as r:
            if r.status_code != 200:
                r.failure(f"HTTP {r.status_code}")
            elif "answer" not in (r.json() or {}):
                r.failure("no answer in the response")
