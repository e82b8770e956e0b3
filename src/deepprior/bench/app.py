"""``deepprior bench app``: the web app under load from many clients at once, on loopback.

The app is started in this process on 127.0.0.1 (a free port, the ``deepprior app`` defaults
unless told otherwise) and ``clients`` API clients start together, each a
:class:`gradio_client.Client` of its own (a session of its own, as separate people are), each
sending one request to ``/restore`` with a 64x64 crop of a bundled example photo:

* ``small``: denoising, ``small_iters`` iterations; the client waits for the result up to
  ``timeout_s`` and counts as served (with its latency, from submission to result), refused
  (the server said no at once, with a reason) or failed;
* ``abandoned``: the same image asking for ``LONG_ITERS`` iterations; the client gives up
  after ``abandon_after_s`` (it cancels the request and closes its connection);
* ``over the limit``: one client asks for more work than the server takes, and must be refused.

Besides the counts and latency percentiles, the server's own record of every fit
(:class:`~deepprior.webqueue.ServerQueue`) gives the CPU the fits used, as fit seconds times
threads per fit, and the part of it spent on abandoned requests after their clients had left.
Everything is bounded: ``clients`` at most 50, every wait by ``timeout_s``.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from pathlib import Path

import numpy as np
from PIL import Image as PILImage

from ..errors import DeepPriorError
from ..images import atomic_write_bytes
from . import resumable
from .resumable import Table, fmt

RESULTS = "app.json"
MARKDOWN = "app.md"
MAX_CLIENTS = 50
LONG_ITERS = 20_000
# The targets on 2 cores with 10 clients.
P95_LIMIT_S = 60.0
ABANDONED_CPU_LIMIT = 0.05


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _photo(folder: Path) -> Path:
    from ..webapp import EXAMPLES_DIR

    path = folder / "bench-app-64.png"
    PILImage.open(EXAMPLES_DIR / "chelsea-noisy.png").convert("RGB").crop((88, 40, 152, 104)).save(path)
    return path


def _client_plan(clients: int, abandoned: int) -> list[str]:
    """The kind of request of each client: ``abandoned`` abandoned ones, one over the work limit
    (when there are at least two clients), small ones for the rest. They all submit at once."""
    over = 1 if clients >= 2 else 0
    return ["abandoned"] * abandoned + ["small"] * (clients - abandoned - over) + ["over the limit"] * over


def _one_client(url: str, kind: str, photo: Path, small_iters: int, abandon_after_s: float, timeout_s: float,
                start: threading.Event, record: dict) -> None:
    from gradio_client import Client, handle_file
    from gradio_client.exceptions import ValidationError

    client = Client(url, verbose=False)
    record["session"] = client.session_hash
    iters = {"small": small_iters, "abandoned": LONG_ITERS, "over the limit": 10 ** 9}[kind]
    start.wait()
    t0 = time.monotonic()
    record["submitted"] = t0
    try:
        job = client.submit(handle_file(str(photo)), "denoise", 2, None, "fast", iters, 0, api_name="/restore")
        if kind == "abandoned":
            time.sleep(abandon_after_s)
            record["left"] = time.monotonic()
            job.cancel()
            record["status"] = "cancelled"
            return
        out = job.result(timeout=timeout_s)
        record["latency_s"] = time.monotonic() - t0
        record["status"] = "served" if out and Path(out).is_file() else "failed"
    except ValidationError as e:
        record["status"], record["message"] = "refused", str(e).splitlines()[-1]
    except Exception as e:  # a timeout or an error from the server
        record["status"], record["message"] = "failed", f"{type(e).__name__}: {str(e)[:200]}"
    finally:
        client.close()


def run_app_load(out_dir: Path, *, clients: int = 10, abandoned: int = 3, small_iters: int = 100,
                 abandon_after_s: float = 5.0, timeout_s: float = 300.0, concurrency: int | None = None,
                 threads: int | None = None, log=lambda s: None) -> dict:
    """Run the load and write ``app.json`` and ``app.md`` to ``out_dir``; returns the results."""
    from ..webapp import launch

    if not 1 <= clients <= MAX_CLIENTS:
        raise DeepPriorError(f"--clients must be between 1 and {MAX_CLIENTS}, got {clients}")
    if not 0 <= abandoned < max(clients, 1):
        raise DeepPriorError(f"--abandoned must be between 0 and the clients less one, got {abandoned}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    photo = _photo(out_dir)
    app, url = launch(port=_free_port(), block=False, concurrency=concurrency, threads=threads, examples=False)
    server = app.deepprior_queue
    kinds = _client_plan(clients, abandoned)
    records = [{"kind": k} for k in kinds]
    start = threading.Event()
    workers = [threading.Thread(target=_one_client, args=(url, k, photo, small_iters, abandon_after_s, timeout_s,
                                                          start, r), daemon=True) for k, r in zip(kinds, records)]
    try:
        for w in workers:
            w.start()
        time.sleep(2.0)  # every client connected before any submits
        log(f"{clients} clients on {url}: {kinds.count('small')} small, {kinds.count('abandoned')} abandoned, "
            f"{kinds.count('over the limit')} over the limit")
        t0 = time.monotonic()
        start.set()
        for w in workers:
            w.join(timeout_s + abandon_after_s + 30)
        # Let abandoned fits wind down before the server's record is read.
        end = time.monotonic() + 30
        while any(j.ended is None for j in server.jobs) and time.monotonic() < end:
            time.sleep(0.2)
        wall = time.monotonic() - t0
        data = _summarise(records, server, wall, clients)
        data["config"] = {"clients": clients, "abandoned": abandoned, "small_iters": small_iters,
                          "abandon_after_s": abandon_after_s, "timeout_s": timeout_s,
                          "concurrency": app.deepprior_settings.concurrency,
                          "threads_per_fit": app.deepprior_settings.threads}
    finally:
        app.close()
    data["machine"] = resumable.machine("cpu")
    data["started"] = resumable.now_iso()
    atomic_write_bytes(out_dir / RESULTS, json.dumps(data, indent=1).encode())
    atomic_write_bytes(out_dir / MARKDOWN, markdown(data).encode())
    return data


def _summarise(records: list[dict], server, wall: float, clients: int) -> dict:
    threads = server.threads
    by_session = {j.session: j for j in server.jobs}
    fit_cpu = sum(((j.ended or time.monotonic()) - j.started) * threads for j in server.jobs)
    after_left = 0.0
    for r in records:
        job = by_session.get(r.get("session"))
        if r["kind"] == "abandoned" and job is not None and "left" in r:
            after_left += max(0.0, (job.ended or time.monotonic()) - max(r["left"], job.started)) * threads
    latencies = sorted(r["latency_s"] for r in records if r.get("status") == "served")
    counts = {s: sum(1 for r in records if r.get("status") == s) for s in ("served", "refused", "cancelled", "failed")}
    pct = (lambda q: float(np.percentile(latencies, q)) if latencies else None)
    return {
        "counts": counts,
        "unanswered": clients - sum(counts.values()),
        "latency_s": {"p50": pct(50), "p95": pct(95), "max": latencies[-1] if latencies else None},
        "fit_cpu_s": fit_cpu,
        "abandoned_cpu_after_leaving_s": after_left,
        "abandoned_share": after_left / fit_cpu if fit_cpu else 0.0,
        "server_outcomes": dict(server.counts),
        "wall_s": wall,
        "requests": [{k: v for k, v in r.items() if k != "session"} for r in records],
    }


def tables(data: dict) -> list[Table]:
    c, lat, cfg = data["counts"], data["latency_s"], data.get("config", {})
    small = [r for r in data["requests"] if r["kind"] == "small"]
    all_answered = data["unanswered"] == 0 and c["failed"] == 0
    load = Table("Load: clients at once on one server",
                 ["clients", "served", "refused", "cancelled by their client", "failed", "no answer",
                  "p50 latency (s)", "p95 latency (s)", "max (s)", "wall (s)"])
    load.rows.append([str(cfg.get("clients")), str(c["served"]), str(c["refused"]), str(c["cancelled"]),
                      str(c["failed"]), str(data["unanswered"]), fmt(lat["p50"], 1), fmt(lat["p95"], 1),
                      fmt(lat["max"], 1), fmt(data["wall_s"], 1)])
    load.notes.append(f"{len(small)} small requests (64x64, {cfg.get('small_iters')} iterations), "
                      f"{cfg.get('abandoned')} abandoned after {cfg.get('abandon_after_s')} s "
                      f"({LONG_ITERS} iterations asked), the rest over the work limit; the server ran "
                      f"{cfg.get('concurrency')} fits at once, {cfg.get('threads_per_fit')} thread(s) each.")
    cpu = Table("CPU on abandoned requests", ["fit CPU (s)", "after their clients left (s)", "share"])
    cpu.rows.append([fmt(data["fit_cpu_s"], 1), fmt(data["abandoned_cpu_after_leaving_s"], 2),
                     f"{100 * data['abandoned_share']:.2f} %"])
    targets = Table("Targets", ["target", "measured", "met"])
    targets.rows += [
        ["every request served or cleanly refused", f"{c['served']} served, {c['refused']} refused, "
         f"{c['failed']} failed, {data['unanswered']} unanswered", fmt(all_answered)],
        [f"p95 latency under {P95_LIMIT_S:.0f} s", fmt(lat["p95"], 1), fmt(lat["p95"] is not None and lat["p95"] < P95_LIMIT_S)],
        [f"CPU on abandoned requests under {100 * ABANDONED_CPU_LIMIT:.0f} %", f"{100 * data['abandoned_share']:.2f} %",
         fmt(data["abandoned_share"] < ABANDONED_CPU_LIMIT)],
    ]
    return [load, cpu, targets]


def markdown(data: dict) -> str:
    m = data.get("machine", {})
    pre = [f"- machine: {m.get('cpu')}, {m.get('cores')} cores, torch {m.get('torch')}, deepprior {m.get('deepprior')}",
           f"- run {data.get('started')}; raw results: [{RESULTS}]({RESULTS})"]
    return resumable.to_markdown("deepprior bench app", pre, tables(data))
