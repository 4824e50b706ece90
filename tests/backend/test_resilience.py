"""Nothing is lost: PostgreSQL restarted, the worker absent, SIGTERM, SIGKILL mid-batch."""

from __future__ import annotations

import random
import signal
import threading
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from homehub_backend.config import BackendConfig
from homehub_backend.sandbox import PostgresSandbox

from gateway.sim.broker import MosquittoBroker
from tests.backend.support import (
    ConfirmCollector,
    Publisher,
    ThreadWorker,
    reading_doc,
    reading_ids,
    stop_process,
    worker_process,
)
from tests.helpers import LineReader

Make = Callable[..., tuple[Path, BackendConfig]]


def test_postgresql_restarted_mid_run_loses_nothing(
    broker: MosquittoBroker, backend_config: Make, database: str, pg: PostgresSandbox
) -> None:
    _, config = backend_config(broker.port, ingest={"batch_max": 50})
    docs = [reading_doc("hub-a", n) for n in range(1000)]
    confirms = ConfirmCollector(broker.port, ["hub-a"]).start()
    worker = ThreadWorker(config).start()
    hub = Publisher(broker.port)
    sender = threading.Thread(target=hub.readings, args=(docs,), daemon=True)
    try:
        hub.readings(docs[:100])
        confirms.wait_for({d["id"] for d in docs[:100]}, timeout_s=10)
        sender.start()
        pg.crash()  # immediate shutdown, as on a power cut: crash recovery at the next start
        stored_before = worker.worker.counters.stored
        pg.start()
        confirms.wait_for({d["id"] for d in docs}, timeout_s=30)
        sender.join(10)
    finally:
        hub.close()
        worker.stop()
        confirms.stop()
    assert stored_before < len(docs)  # the crash did happen mid-run
    ids = reading_ids(database)
    assert len(ids) == len(docs) and set(ids) == {d["id"] for d in docs}


def test_readings_wait_in_the_session_while_the_worker_is_away(
    broker: MosquittoBroker, backend_config: Make, database: str
) -> None:
    path, _ = backend_config(broker.port)
    # First start creates the persistent session and its subscription; SIGTERM ends it.
    process = worker_process(path)
    LineReader(process).wait_for("ingest: subscribed", 15)
    assert stop_process(process) == 0
    docs = [reading_doc("hub-a", n) for n in range(500)]
    hub = Publisher(broker.port)
    confirms = ConfirmCollector(broker.port, ["hub-a"]).start()
    try:
        hub.readings(docs)  # PUBACKed by the broker, held in the worker's session
        assert reading_ids(database) == []
        process = worker_process(path)
        confirms.wait_for({d["id"] for d in docs}, timeout_s=20)
        assert stop_process(process) == 0
    finally:
        hub.close()
        confirms.stop()
        if process.poll() is None:
            process.kill()
    assert sorted(reading_ids(database)) == sorted(d["id"] for d in docs)


def test_two_workers_one_sigkilled_again_and_again_lose_nothing(
    broker: MosquittoBroker, backend_config: Make, database: str
) -> None:
    path_a, _ = backend_config(broker.port, ingest={"batch_max": 100, "batch_wait_ms": 20.0})
    path_b, _ = backend_config(broker.port, ingest={"batch_max": 100, "batch_wait_ms": 20.0})
    docs = [reading_doc(f"hub-{n % 5}", n) for n in range(2000)]
    rng = random.Random(9)
    confirms = ConfirmCollector(broker.port, [f"hub-{g}" for g in range(5)]).start()
    b = worker_process(path_b)
    LineReader(b).wait_for("ingest: subscribed", 15)
    a = worker_process(path_a)
    LineReader(a).wait_for("ingest: subscribed", 15)
    hub = Publisher(broker.port)
    chunks = [docs[i : i + 100] for i in range(0, len(docs), 100)]
    sender = threading.Thread(target=lambda: [hub.readings(c) for c in chunks], daemon=True)
    kills = 0
    try:
        sender.start()
        while kills < 5:
            # A random moment: somewhere inside a batch, between batches, at start-up.
            threading.Event().wait(rng.uniform(0.05, 0.4))
            a.send_signal(signal.SIGKILL)
            a.wait(5)
            kills += 1
            a = worker_process(path_a)  # the same client id: it resumes its session
        sender.join(60)
        assert not sender.is_alive()
        confirms.wait_for({d["id"] for d in docs}, timeout_s=30)
    finally:
        hub.close()
        confirms.stop()
        for p in (a, b):
            if p.poll() is None:
                stop_process(p)
    assert kills == 5
    ids = reading_ids(database)
    assert not [i for i, n in Counter(ids).items() if n > 1]
    assert set(ids) == {d["id"] for d in docs}


def test_sigterm_commits_and_confirms_the_batch_in_hand_then_exits_0(
    broker: MosquittoBroker, backend_config: Make, database: str
) -> None:
    path, _ = backend_config(broker.port, ingest={"batch_max": 10000, "batch_wait_ms": 1000.0})
    docs = [reading_doc("hub-a", n) for n in range(200)]
    process = worker_process(path, log_level="DEBUG")
    out = LineReader(process)
    out.wait_for("ingest: subscribed", 15)
    hub = Publisher(broker.port)
    confirms = ConfirmCollector(broker.port, ["hub-a"]).start()
    try:
        hub.readings(docs)
        # The batch is open and still filling (for 1 s): SIGTERM now must commit it.
        out.wait_for("ingest: batch open", 5)
        assert stop_process(process, timeout_s=5) == 0
        line = out.wait_for("ingest: stopped:", 5)
        stored = int(line.split("stopped: ")[1].split()[0])
        assert stored > 0
        ids = set(reading_ids(database))
        assert len(ids) == stored
        confirms.wait_for(ids, timeout_s=5)
        # What it had not taken into the batch it had not acknowledged: the next start gets it.
        process = worker_process(path)
        confirms.wait_for({d["id"] for d in docs}, timeout_s=15)
        assert stop_process(process) == 0
    finally:
        hub.close()
        confirms.stop()
        if process.poll() is None:
            process.kill()
    assert len(reading_ids(database)) == 200
