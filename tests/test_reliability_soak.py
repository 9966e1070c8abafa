"""Load: 64 concurrent clients x 50 requests against one engine (4 slots), all to 127.0.0.1.

Nothing may fail or be lost, and the engine must not leak: threads, open file descriptors and
memory (of this process and of llama-server) come back to a bounded level after each round,
and a second round does not raise them further. Bounded in count (3,200 requests of 4 tokens)
and in time (each round stops itself at ROUND_DEADLINE_S and the test then fails).
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from llcuda.processes.client import POOL_SIZE, LlamaClient

CLIENTS = 64
REQUESTS_PER_CLIENT = 50
ROUNDS = 2  # 2 x 25 requests per client: the second round shows whether anything grows
ROUND_DEADLINE_S = 240.0
MAX_TOKENS = 4


def _resources(pid: int | str = "self") -> dict[str, int]:
    status = Path(f"/proc/{pid}/status").read_text()
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    return {
        "threads": int(fields["Threads"]),
        "fds": len(os.listdir(f"/proc/{pid}/fd")),
        "rss_kib": int(fields["VmRSS"].split()[0]),
    }


class Peak:
    """Samples this process and the server every 50 ms while a round runs."""

    def __init__(self, server_pid: int, url: str) -> None:
        self.server_pid, self.client = server_pid, LlamaClient(url)
        self.max: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="soak-monitor")

    def _run(self) -> None:
        tick = 0
        while not self._stop.wait(0.05):
            sample = {f"self_{k}": v for k, v in _resources().items()}
            sample.update({f"server_{k}": v for k, v in _resources(self.server_pid).items()})
            tick += 1
            if tick % 2 == 0:  # the server's own counters, ten times a second
                metrics = self.client.metrics()
                sample["server_processing"] = int(metrics.get("requests_processing", 0))
                sample["server_deferred"] = int(metrics.get("requests_deferred", 0))
            for key, value in sample.items():
                self.max[key] = max(self.max.get(key, 0), value)

    def __enter__(self) -> Peak:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.client.close()


def _round(engine, requests_per_client: int) -> tuple[list[str], int, int, float]:
    """Run one round; return (failures, requests done, tokens generated, seconds)."""
    failures: list[str] = []
    done = [0] * CLIENTS
    tokens = [0] * CLIENTS
    deadline = time.monotonic() + ROUND_DEADLINE_S
    start = threading.Barrier(CLIENTS)
    messages = [{"role": "user", "content": "Say something."}]

    def client(cid: int) -> None:
        start.wait()
        for i in range(requests_per_client):
            if time.monotonic() > deadline:
                failures.append(f"client {cid}: round deadline passed after {i} requests")
                return
            kind = (cid + i) % 4
            try:
                if kind == 2:
                    stream = engine.infer_stream(
                        f"client {cid} request {i}", max_tokens=MAX_TOKENS, temperature=0.0, ignore_eos=True
                    )
                    text = "".join(stream)
                    result = stream.result
                    assert result is not None and result.text == text
                elif kind == 3:
                    result = engine.chat(messages, max_tokens=MAX_TOKENS, temperature=0.0)
                else:
                    result = engine.infer(
                        f"client {cid} request {i}", max_tokens=MAX_TOKENS, temperature=0.0, ignore_eos=True
                    )
                if kind != 3 and result.tokens_generated != MAX_TOKENS:
                    failures.append(f"client {cid} request {i}: {result.tokens_generated} tokens, not {MAX_TOKENS}")
                tokens[cid] += result.tokens_generated
                done[cid] += 1
            except Exception as exc:  # noqa: BLE001 - every failure is counted and shown
                failures.append(f"client {cid} request {i}: {type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=client, args=(cid,), name=f"soak-{cid}") for cid in range(CLIENTS)]
    began = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(ROUND_DEADLINE_S + 60)
    assert not any(t.is_alive() for t in threads), "a client thread hung past the round deadline"
    return failures, sum(done), sum(tokens), time.monotonic() - began


@pytest.mark.slow
@pytest.mark.timeout(2 * ROUND_DEADLINE_S + 120)
def test_soak_64_clients_x_50_requests(tiny_engine, record_property):
    engine = tiny_engine
    slots = engine.server.settings.n_parallel
    server_pid = engine.server.pid
    client = LlamaClient(engine.url)
    engine.infer("warm up", max_tokens=1)
    baseline = {"self": _resources(), "server": _resources(server_pid)}
    predicted_before = client.metrics()["tokens_predicted_total"]
    engine.reset_metrics()
    after: list[dict[str, dict[str, int]]] = []
    report: dict[str, object] = {"baseline": baseline}
    total_done = total_tokens = 0
    for n in range(ROUNDS):
        with Peak(server_pid, engine.url) as peak:
            failures, done, tokens, seconds = _round(engine, REQUESTS_PER_CLIENT // ROUNDS)
        assert failures == [], f"{len(failures)} failures, e.g. {failures[:5]}"
        assert done == CLIENTS * REQUESTS_PER_CLIENT // ROUNDS
        total_done += done
        total_tokens += tokens
        after.append({"self": _resources(), "server": _resources(server_pid)})
        report[f"round{n + 1}"] = {
            "requests_per_s": round(done / seconds, 1),
            "seconds": round(seconds, 1),
            "peak": dict(peak.max),
            "after": after[-1],
        }
        record_property("soak", report)
        print(f"\nsoak: {report}")
        # Requests beyond the slots waited in the server's queue; it never decoded more than its slots.
        assert peak.max["server_deferred"] > 0 and peak.max["server_processing"] <= slots
        # Bounded while running: 64 client threads and the monitor here, a thread per connection there.
        assert peak.max["self_threads"] <= baseline["self"]["threads"] + CLIENTS + 4
        assert peak.max["server_threads"] <= baseline["server"]["threads"] + CLIENTS + 16

    assert engine.server.pid == server_pid and engine.server.is_running(), "the server restarted under load"
    metrics = engine.get_metrics()
    assert metrics.requests == CLIENTS * REQUESTS_PER_CLIENT and metrics.failures == 0
    # Nothing lost or counted twice: the server generated exactly the tokens the clients received.
    assert client.metrics()["tokens_predicted_total"] - predicted_before == total_tokens
    assert client.metrics()["requests_processing"] == 0

    first, second = after
    assert first["self"]["threads"] <= baseline["self"]["threads"] + 2, "client threads left running"
    for who in ("self", "server"):
        assert second[who]["threads"] <= first[who]["threads"] + 2, f"{who}: threads grow with requests"
        assert second[who]["fds"] <= first[who]["fds"] + 4, f"{who}: file descriptors grow with requests"
        assert second[who]["rss_kib"] - first[who]["rss_kib"] < 64 * 1024, f"{who}: memory grows with requests"
    # Keep-alive connections stay pooled (bounded by the pool size), everything else is closed.
    assert first["self"]["fds"] <= baseline["self"]["fds"] + POOL_SIZE
    client.close()
    # The server parks a thread on each idle keep-alive connection until its keep-alive timeout (5 s);
    # then they all go: nothing leaked there either.
    deadline = time.monotonic() + 60
    while _resources(server_pid)["threads"] > baseline["server"]["threads"] + 4 and time.monotonic() < deadline:
        time.sleep(0.5)
    assert _resources(server_pid)["threads"] <= baseline["server"]["threads"] + 4, "server threads never came back"
