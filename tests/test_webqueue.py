"""The shared server's queue: abandoned fits stop, places in line are told, limits refuse.

A live server on 127.0.0.1 running one fit at a time (``concurrency=1``), one thread, tiny
images; long fits are asked for (thousands of iterations) and never waited for to the end.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from PIL import Image as PILImage

pytest.importorskip("gradio")
from gradio_client import Client, handle_file  # noqa: E402
from gradio_client.exceptions import ValidationError  # noqa: E402

from deepprior import webapp  # noqa: E402
from deepprior.webqueue import FIT_QUEUE, Job, ServerQueue  # noqa: E402

from test_webapp import free_port  # noqa: E402

LONG = 20_000  # iterations: a fit that would run for many minutes


@pytest.fixture(scope="module")
def photo(tmp_path_factory) -> Path:
    src = PILImage.open(webapp.EXAMPLES_DIR / "chelsea-noisy.png").convert("RGB")
    path = tmp_path_factory.mktemp("in") / "cat.png"
    src.crop((88, 40, 136, 88)).save(path)  # 48x48
    return path


@pytest.fixture(scope="module")
def server():
    app, url = webapp.launch(port=free_port(), block=False, threads=1, examples=False, concurrency=1,
                             max_work=48 * 48 * 30_000, max_queued_per_client=2)
    try:
        yield app, url
    finally:
        app.close()


def wait_for(condition, timeout=60.0, what="condition"):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if condition():
            return
        time.sleep(0.1)
    pytest.fail(f"timed out waiting for {what}")


def running(app) -> list[Job]:
    return [j for j in app.deepprior_queue.jobs if j.ended is None]


def submit_long(url, photo) -> tuple[Client, object]:
    client = Client(url, verbose=False)
    return client, client.submit(handle_file(str(photo)), "denoise", 2, None, "fast", LONG, 0, api_name="/restore")


def test_a_client_that_disconnects_has_its_fit_stopped(server, photo):
    app, url = server
    code = (f"from gradio_client import Client, handle_file\n"
            f"Client({url!r}, verbose=False).predict(handle_file({str(photo)!r}), 'denoise', 2, None, 'fast', "
            f"{LONG}, 0, api_name='/restore')")
    child = subprocess.Popen([sys.executable, "-c", code])
    try:
        wait_for(lambda: running(app), what="the fit to start")
        job = running(app)[0]
        wait_for(lambda: job.eta_s is not None, what="the fit's first iterations")
        child.kill()
        wait_for(lambda: job.ended is not None, timeout=30, what="the abandoned fit to stop")
    finally:
        child.kill()
    assert job.outcome == "abandoned"
    assert job.ended - job.started < 60  # stopped long before its 20000 iterations


def test_a_cancelled_request_stops_its_fit(server, photo):
    app, url = server
    _, job = submit_long(url, photo)
    wait_for(lambda: running(app) and running(app)[0].eta_s is not None, what="the fit to start")
    fit = running(app)[0]
    job.cancel()
    wait_for(lambda: fit.ended is not None, timeout=30, what="the cancelled fit to stop")
    assert fit.outcome == "abandoned"


def test_a_waiting_request_is_told_its_place_and_wait(server, photo):
    app, url = server
    first_client, first = submit_long(url, photo)
    wait_for(lambda: running(app) and running(app)[0].eta_s is not None, what="the first fit to start")
    second_client, second = submit_long(url, photo)
    wait_for(lambda: app.deepprior_queue.status(second_client.session_hash)["position"] == 1,
             what="the second request to be queued")
    st = second_client.predict(api_name="/queue_status")
    assert st["position"] == 1 and st["running"] == 1 and st["waiting"] == 1
    assert st["wait_s"] > 0
    line = app.deepprior_queue.describe(second_client.session_hash)
    assert line.startswith("In the queue: 1st in line (0 requests ahead of yours, 1 running)")
    assert second.status().rank == 0  # Gradio's own status agrees: next in line
    second.cancel()
    first.cancel()
    wait_for(lambda: not running(app), timeout=30, what="the fits to stop")


def test_requests_over_the_work_limit_or_one_clients_share_are_refused(server, photo):
    app, url = server
    client = Client(url, verbose=False)
    with pytest.raises(ValidationError, match="million pixel-iterations"):
        client.predict(handle_file(str(photo)), "denoise", 2, None, "fast", 40_000, 0, api_name="/restore")
    jobs = [client.submit(handle_file(str(photo)), "denoise", 2, None, "fast", LONG, 0, api_name="/restore")
            for _ in range(2)]
    wait_for(lambda: len(running(app)) + app.deepprior_queue.status(client.session_hash)["waiting"] >= 2,
             what="two requests of one client in")
    with pytest.raises(ValidationError, match="you already have 2 restorations waiting or running"):
        client.predict(handle_file(str(photo)), "denoise", 2, None, "fast", 5, 0, api_name="/restore")
    for j in jobs:
        j.cancel()
    wait_for(lambda: not running(app), timeout=30, what="the fits to stop")
    # Once they are gone the same client is served again.
    out = client.predict(handle_file(str(photo)), "denoise", 2, None, "fast", 3, 0, api_name="/restore")
    assert Path(out).is_file()


# -- the estimate, without a server --------------------------------------------------------------


def fake_blocks(queued_sessions: list[str]):
    events = [SimpleNamespace(session_hash=s) for s in queued_sessions]
    q = SimpleNamespace(event_queue_per_concurrency_id={FIT_QUEUE: SimpleNamespace(queue=events)}, active_jobs=[])
    return SimpleNamespace(_queue=q)


def test_the_wait_adds_the_running_fits_time_left_and_the_work_ahead():
    sq = ServerQueue(concurrency=1, threads=1, max_work=None, max_queued_per_client=5)
    sq.s_per_unit = 1e-3
    sq.blocks = fake_blocks([])
    assert sq.admit("a", 10_000) is None  # will take 10 s at this rate
    assert sq.admit("b", 20_000) is None
    assert sq.admit("c", 5_000) is None
    run = sq.start("a")
    run.eta_s = 4.0
    sq.blocks = fake_blocks(["b", "c"])
    assert sq.status("b") == {"position": 1, "waiting": 2, "running": 1, "wait_s": 4.0}
    assert sq.status("c") == {"position": 2, "waiting": 2, "running": 1, "wait_s": 24.0}
    assert sq.status("z")["position"] is None and sq.status("z")["wait_s"] == 29.0
    sq.finish(run, "served", 100, 100)
    assert sq.counts["served"] == 1 and run.ended is not None


def test_admission_limits_and_their_messages():
    sq = ServerQueue(concurrency=1, threads=1, max_work=1e6, max_queued_per_client=1)
    sq.blocks = fake_blocks([])
    assert "this server takes at most 1 million" in sq.admit("a", 2e6)
    assert sq.admit("a", 5e5) is None
    sq.blocks = fake_blocks(["a"])
    assert "you already have 1 restoration waiting or running" in sq.admit("a", 5e5)
    assert sq.admit("b", 5e5) is None
    assert sq.counts["refused"] == 2


def test_the_load_benchmark_counts_what_happened_to_each_client(tmp_path, capsys):
    from deepprior.cli import main

    assert main(["bench", "app", "--clients", "3", "--abandoned", "1", "--threads", "1", "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "CPU on abandoned requests" in printed and "p95 latency under 60 s" in printed
    import json

    data = json.loads((tmp_path / "app.json").read_text())
    assert data["counts"] == {"served": 1, "refused": 1, "cancelled": 1, "failed": 0}
    assert data["unanswered"] == 0 and data["latency_s"]["p50"] > 0
    assert 0 <= data["abandoned_share"] < 1
    refused = next(r for r in data["requests"] if r["kind"] == "over the limit")
    assert "million pixel-iterations" in refused["message"]
    assert (tmp_path / "app.md").read_text().startswith("# deepprior bench app")


def test_the_command_lines_limits_are_the_web_apps(capsys):
    import inspect

    from deepprior import cli

    params = inspect.signature(cli.app_command).parameters
    assert params["max_work"].default * 1e6 == webapp.DEFAULT_MAX_WORK
    assert params["max_queued"].default == webapp.DEFAULT_MAX_QUEUED_PER_CLIENT
    assert cli.main(["app", "--max-work", "-1"]) == 2
    assert "--max-work must be 0 (no limit) or positive" in capsys.readouterr().err
