"""Hostile and unusual input through the web app's ``/restore`` endpoint.

A local server (127.0.0.1, a free port, ``max_iterations=2``, one thread) gets the whole corpus
of ``tests/corpus.py`` through :mod:`gradio_client`: a bad file must come back as an exception
whose message is the app's one-line error (no traceback, no server path); a good file as a PNG
of its size, mode and bit depth. Beyond the files: an upload with a path for a name is never
used as a path, a kernel "spec" that is a server path is refused unread, result URLs live in
unguessable per-result folders, the server binds loopback by default, and ten users at once all
get their own answer and leave the server working.

Some requests are made over the plain HTTP API (``/gradio_api/upload`` and
``/gradio_api/call/restore``) with httpx, to send what gradio_client never would.
"""

from __future__ import annotations

import inspect
import json
import re
import socket
import sys
import threading
import time
from pathlib import Path

import pytest

gr = pytest.importorskip("gradio")
httpx = pytest.importorskip("httpx")
from gradio_client import Client, handle_file  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
import corpus  # noqa: E402

from deepprior import webapp  # noqa: E402
from deepprior.images import load_image  # noqa: E402

MAX_PIXELS = 20_000
REQUEST_TIMEOUT = 90  # seconds for any one request: nothing here may hang the suite


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server():
    """The app as ``deepprior app`` serves it (default host), capped at two iterations."""
    app, url = webapp.launch(port=free_port(), block=False, threads=1, examples=False, max_iterations=2,
                             max_pixels=MAX_PIXELS)
    try:
        yield app, url
    finally:
        app.close()


@pytest.fixture(scope="module")
def client(server):
    return Client(server[1], verbose=False)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    return corpus.write_corpus(tmp_path_factory.mktemp("corpus"))


def predict(client, path, task="denoise", scale=2, mask=None, preset="fast", iters=2, seed=0, kernel="gaussian:1.5"):
    job = client.submit(handle_file(str(path)), task, scale, mask, preset, iters, seed, kernel, api_name="/restore")
    return job.result(timeout=REQUEST_TIMEOUT)


def server_paths(app) -> list[str]:
    """Folders of the server whose names must never reach a user."""
    return [str(app.deepprior_settings.workdir), str(Path(gr.utils.get_upload_folder())), "/tmp/", "Traceback"]


def assert_clean_message(msg: str, app, fragment: str = "") -> None:
    assert msg and "\n" not in msg.strip(), msg
    for secret in server_paths(app):
        assert secret not in msg, (secret, msg)
    assert fragment in msg, msg


# Where the app words a corpus error its own way (pixels are counted for a person, not megapixels).
WEB_FRAGMENT = {"megapixels": f"pixels; this server takes at most {MAX_PIXELS:,}"}


# --- the corpus ----------------------------------------------------------------------------


@pytest.mark.parametrize("sample", corpus.bad_samples(), ids=lambda s: s.name)
def test_bad_files_give_the_apps_one_line_error(sample, server, client, files):
    with pytest.raises(Exception) as e:
        predict(client, files[sample.name])
    assert_clean_message(str(e.value), server[0], WEB_FRAGMENT.get(sample.error, sample.error))
    assert str(e.value).startswith("the image")  # the app's words, not gradio's generic failure


@pytest.mark.parametrize("sample", corpus.good_samples(), ids=lambda s: s.name)
def test_good_files_give_a_png_as_they_were(sample, client, files):
    out = predict(client, files[sample.name])
    assert Path(out).read_bytes().startswith(corpus.PNG_SIGNATURE)
    back = load_image(out)
    assert (back.size, back.mode, back.bit_depth) == (sample.size, sample.mode, sample.bit_depth)


def test_bad_options_are_one_line_and_name_no_server_path(server, client, files):
    photo = files["tiny_5x7_png"]
    for kwargs, fragment in (
        (dict(task="upscale", scale=5), "scale must be one of"),
        (dict(iters=-1), "the iteration cap must be at least 1"),
        (dict(seed=2**70), "the seed must be between"),
        (dict(task="upscale", scale=8, iters=2), None),  # 40x56: within the limit, must work
    ):
        if fragment is None:
            assert load_image(predict(client, photo, **kwargs)).size == (40, 56)
            continue
        with pytest.raises(Exception) as e:
            predict(client, photo, **kwargs)
        assert_clean_message(str(e.value), server[0], fragment)


@pytest.mark.parametrize("spec", ["/etc/passwd", "gaussian", "../../../../etc/hostname", "{photo}"])
def test_a_kernel_spec_is_never_read_as_a_server_path(spec, server, client, files):
    """The API's kernel is text: gaussian:SIGMA or motion:LENGTH,ANGLE. A path there would let
    anyone probe the server's files (``no such file`` against ``not an image``), or use one."""
    photo = files["tiny_5x7_png"]
    spec = spec.format(photo=files["tiny_1x1_png"])  # a real image on the server: refused all the same
    with pytest.raises(Exception) as e:
        predict(client, photo, "deblur", kernel=spec)
    msg = str(e.value)
    assert "the kernel must be gaussian:SIGMA or motion:LENGTH,ANGLE" in msg, msg
    assert "no such file" not in msg and "not an image" not in msg
    assert "&#x27;" not in msg  # quotes reach a program as quotes
    out = predict(client, photo, "deblur", kernel="motion:3,45")
    assert load_image(out).size == (5, 7)


# --- names, paths and result URLs ------------------------------------------------------------


def upload(url: str, name: str, data: bytes) -> str:
    r = httpx.post(url + "gradio_api/upload", files=[("files", (name, data, "image/png"))], timeout=REQUEST_TIMEOUT)
    r.raise_for_status()
    (path,) = r.json()
    return path


def call(url: str, data: list) -> tuple[str, object]:
    """One ``/restore`` call over plain HTTP: (the event that ended it, its data)."""
    r = httpx.post(url + "gradio_api/call/restore", json={"data": data}, timeout=REQUEST_TIMEOUT)
    if r.status_code in (400, 422):  # refused as it joined the queue (admission checks the inputs)
        return "error", r.json()
    r.raise_for_status()
    event_id = r.json()["event_id"]
    event = payload = None
    with httpx.stream("GET", url + f"gradio_api/call/restore/{event_id}", timeout=REQUEST_TIMEOUT) as s:
        for line in s.iter_lines():
            if line.startswith("event:"):
                event = line.split(":", 1)[1].strip()
            elif line.startswith("data:") and event in ("complete", "error"):
                payload = json.loads(line.split(":", 1)[1])
                break
    return event, payload


def file_data(path: str, name: str | None = None) -> dict:
    d = {"path": path, "meta": {"_type": "gradio.FileData"}}
    if name is not None:
        d["orig_name"] = name
    return d


HOSTILE_NAMES = ["../../etc/passwd.png", "/etc/cron.d/deepprior.png", "..\\..\\windows\\win.ini.png",
                 "photo.png\x00.sh", ".bashrc.png"]


@pytest.mark.parametrize("name", HOSTILE_NAMES, ids=["dotdot", "absolute", "backslashes", "nul", "dotfile"])
def test_an_upload_name_is_never_used_as_a_path(name, server):
    app, url = server
    workdir = app.deepprior_settings.workdir
    cache = Path(gr.utils.get_upload_folder()).resolve()
    planted = [Path("/etc/passwd.png"), Path("/etc/cron.d/deepprior.png")]
    assert not any(p.exists() for p in planted)
    before = set(workdir.rglob("*"))
    data = corpus.photo_png(6, 5)
    try:
        stored = Path(upload(url, name, data))
    except httpx.HTTPStatusError as e:  # gradio may refuse the name outright: fine too
        assert e.response.status_code == 400
        return
    assert cache in stored.resolve().parents  # gradio keeps the upload in its cache, whatever its name
    event, payload = call(url, [file_data(str(stored), name), "denoise", 2, None, "fast", 2, 0, "gaussian:1.5", None])
    assert event == "complete", payload
    result = Path(payload[0]["path"])
    assert result.name == "denoise-restored.png"  # named after the task, never after the upload
    assert cache in result.resolve().parents
    made = set(workdir.rglob("*")) - before
    assert {p.name for p in made if p.is_file()} == {"denoise-restored.png"}
    assert all(workdir.resolve() in p.resolve().parents for p in made)
    assert not any(p.exists() for p in planted)
    assert load_image(result).size == (6, 5)


def test_a_server_path_sent_as_the_image_is_refused_unread(server, tmp_path, monkeypatch):
    """Only uploads can be inputs: naming a file of the server (or a URL) gets a bare error. The
    refusal may repeat the path the client sent, but says nothing else of the server: not
    whether the file exists (an existing and a missing file get the same answer), nor its
    contents, nor any other server path, its working folder included (here one under the temp
    folder, where Gradio's own refusal would name it)."""
    app, url = server
    monkeypatch.chdir(tmp_path)
    secret = Path(app.deepprior_settings.workdir) / "secret.png"
    secret.write_bytes(corpus.photo_png(4, 4))
    missing = secret.with_name("missing.png")
    try:
        for fd in (file_data("/etc/passwd"), file_data(str(secret)), file_data("../../../../etc/passwd"),
                   {"path": "x", "url": "http://169.254.169.254/latest/meta-data", "meta": {"_type": "gradio.FileData"}}):
            event, payload = call(url, [fd, "denoise", 2, None, "fast", 2, 0, "gaussian:1.5", None])
            assert event == "error", (fd, payload)
            text = json.dumps(payload).replace(json.dumps(fd.get("path"))[1:-1], "PATH")
            assert "root:" not in text
            for path in server_paths(app) + [str(tmp_path)]:
                assert path not in text, payload
        answers = [json.dumps(call(url, [file_data(str(p)), "denoise", 2, None, "fast", 2, 0, "gaussian:1.5", None]))
                   .replace(str(p), "PATH") for p in (secret, missing)]
        assert answers[0] == answers[1]
    finally:
        secret.unlink()


def test_results_are_in_unguessable_folders_of_their_own(server, files):
    """Two users' results: URLs in different random folders, and the work folder is not served."""
    app, url = server
    stored = upload(url, "photo.png", files["rgb_png"].read_bytes())
    urls = []
    for seed in (1, 2, 1):  # the same request twice, too
        event, payload = call(url, [file_data(stored), "denoise", 2, None, "fast", 2, seed, "gaussian:1.5", None])
        assert event == "complete", payload
        urls.append(payload[0]["url"])
    folders = [u.rsplit("/", 2)[-2] for u in urls]
    assert all(re.fullmatch(r"[0-9a-f]{64}", f) for f in folders), folders  # 256-bit keyed hashes
    assert folders[0] != folders[1]
    for u in urls:
        r = httpx.get(u, timeout=REQUEST_TIMEOUT)
        assert r.status_code == 200 and r.content.startswith(corpus.PNG_SIGNATURE)
    runs = sorted(app.deepprior_settings.workdir.glob("run-*"))
    assert len(runs) == len({p.name for p in runs}) >= 3
    for f in app.deepprior_settings.workdir.glob("run-*/*.png"):  # the server's own copies are not served
        assert httpx.get(url + f"gradio_api/file={f}", timeout=REQUEST_TIMEOUT).status_code in (403, 404)
    for f in ("/etc/passwd", str(app.deepprior_settings.workdir)):
        assert httpx.get(url + f"gradio_api/file={f}", timeout=REQUEST_TIMEOUT).status_code in (403, 404)
    gone = urls[0].replace(folders[0], "0" * 64)
    assert httpx.get(gone, timeout=REQUEST_TIMEOUT).status_code in (403, 404)


# --- where it listens ------------------------------------------------------------------------


def _listening(port: int) -> list[str]:
    """Local addresses (hex, as /proc/net/tcp* gives them) listening on ``port``."""
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            cols = line.split()
            addr, hexport = cols[1].rsplit(":", 1)
            if int(hexport, 16) == port and cols[3] == "0A":  # LISTEN
                found.append(addr)
    return found


def _outside_address() -> str | None:
    """This machine's address on its first non-loopback interface, if it has one."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("192.0.2.1", 9))  # no packet is sent: this only picks the outgoing interface
            addr = s.getsockname()[0]
    except OSError:
        return None
    return None if addr.startswith("127.") or addr == "0.0.0.0" else addr


def test_the_server_listens_on_loopback_only_by_default(server):
    from deepprior import cli

    assert inspect.signature(webapp.launch).parameters["host"].default == "127.0.0.1"
    assert inspect.signature(cli.app_command).parameters["host"].default == "127.0.0.1"
    app, url = server
    assert url.startswith("http://127.0.0.1:")
    port = int(url.rstrip("/").rsplit(":", 1)[1])
    if Path("/proc/net/tcp").exists():
        assert _listening(port) == ["0100007F"]  # 127.0.0.1, and nothing on 0.0.0.0 or ::
    outside = _outside_address()
    if outside is not None:
        with pytest.raises(OSError):
            socket.create_connection((outside, port), timeout=2).close()


# --- many users at once ----------------------------------------------------------------------


def test_ten_users_at_once_each_get_their_own_answer(server, files):
    """Ten concurrent clients, some with bad files: each gets its own result or its own clean
    error within the timeout, and the server still serves a request afterwards."""
    app, url = server
    jobs = []
    for i in range(10):
        if i % 4 == 3:
            jobs.append((files[["truncated_png", "text_as_png", "png_bomb"][i // 4]], None))
        else:
            w, h = 3 + i, 2 + (i * 3) % 7  # a size of its own: the answer shows whose it is
            path = files["rgb_png"].parent / f"user{i}.png"
            path.write_bytes(corpus.photo_png(w, h, seed=i))
            jobs.append((path, (w, h)))
    answers: list = [None] * len(jobs)
    start = threading.Barrier(len(jobs), timeout=REQUEST_TIMEOUT)

    def user(i: int) -> None:
        try:
            c = Client(url, verbose=False)
            start.wait()
            answers[i] = ("ok", predict(c, jobs[i][0]))
        except Exception as e:  # noqa: BLE001 - recorded and checked below
            answers[i] = ("error", e)

    t0 = time.monotonic()
    threads = [threading.Thread(target=user, args=(i,), daemon=True) for i in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(REQUEST_TIMEOUT + 30)
    assert not any(t.is_alive() for t in threads), "a request hung"
    assert time.monotonic() - t0 < 2 * REQUEST_TIMEOUT
    for (path, size), (kind, value) in zip(jobs, answers):
        if size is None:  # a bad file: its own one-line error
            assert kind == "error", (path.name, value)
            assert_clean_message(str(value), app, "the image")
        elif kind == "ok":
            assert load_image(value).size == size, path.name
        else:  # a clean refusal (a full queue, say) is allowed; a crash is not
            assert_clean_message(str(value), app)
            assert "restoration failed" not in str(value), value
    assert sum(kind == "ok" for kind, _ in answers) >= 1
    out = predict(Client(url, verbose=False), files["tiny_2x3_png"])
    assert load_image(out).size == (2, 3)
