"""Restore many photographs in one run that survives crashes, on this machine or on a Ray cluster.

A batch is a list of *jobs*, one per input image. :func:`plan` finds the images (files,
folders searched recursively, globs), pairs each with its companions (``NAME_mask.png`` for
inpainting, ``NAME_flash.png`` for flash/no-flash) and decides where its result goes: the
input tree is mirrored under the output folder, relative to the inputs' common root.

Every finished job is appended to ``OUT/manifest.jsonl`` (flushed and fsynced line by line)
after its output has been written through a temporary file and a rename. A run killed at any
moment, even with ``kill -9``, therefore loses nothing that was finished and leaves no
half-written output; the next run skips each job whose latest record says *done* for the same
input bytes (sha256) and the same parameters, and whose output is still there, and redoes the
rest.

The fitting itself is done by :func:`run_job`, which takes bytes and returns bytes, so it can
run in this process, in a worker process, or as a Ray task on another machine without a shared
filesystem. Only the driver writes files.
"""

from __future__ import annotations

import datetime as _dt
import glob
import hashlib
import json
import os
import signal
import socket
import stat
import time
from collections import Counter, deque
from dataclasses import dataclass, field, replace
from pathlib import Path

from .errors import DeepPriorError
from .images import DEFAULT_MAX_PIXELS, atomic_write_bytes, encode_image, load_image
from .tasks import SCALES, TASK_NAMES, from_name

MANIFEST = "manifest.jsonl"

#: Extensions picked up when a folder is searched (a file named on the command line is always tried).
IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".webp", ".bmp", ".gif", ".ppm", ".pgm", ".pnm"}

#: Name suffixes of companion files, which are never inputs themselves.
MASK_SUFFIX = "_mask"
FLASH_SUFFIX = "_flash"

EXECUTORS = ("local", "ray")


# --------------------------------------------------------------------------------------------
# What to do: settings and jobs
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Settings:
    """The restoration asked for, the same for every image of the batch."""

    task: str
    scale: int = 4
    mode: str = "text"
    mask_known: bool = False
    kernel: str | None = None
    sigma: float | None = None
    preset: str = "fast"
    iterations: int | None = None
    seed: int = 0
    max_pixels: int = DEFAULT_MAX_PIXELS

    def check(self) -> None:
        """Refuse impossible settings before any image is read."""
        if self.task not in TASK_NAMES:
            raise DeepPriorError(f"unknown task {self.task!r}; choose one of {', '.join(TASK_NAMES)}")
        if self.preset not in ("fast", "paper"):
            raise DeepPriorError(f"preset must be 'fast' or 'paper', got {self.preset!r}")
        if self.iterations is not None and self.iterations < 0:
            raise DeepPriorError(f"--iters must be 0 (the classical start alone) or more, got {self.iterations}")
        if not -(2**63 - 3) <= self.seed <= 2**63 - 3:  # the fit also seeds with seed + 1, seed + 2
            raise DeepPriorError(f"--seed must be between {-(2**63 - 3)} and {2**63 - 3}, got {self.seed}")
        if self.max_pixels < 1:
            raise DeepPriorError(f"--max-pixels must be positive, got {self.max_pixels}")
        if self.task == "upscale" and self.scale not in SCALES:
            raise DeepPriorError(f"--scale must be one of {', '.join(map(str, SCALES))}, got {self.scale}")
        if self.task == "inpaint" and self.mode not in ("text", "hole"):
            raise DeepPriorError(f"--mode must be 'text' or 'hole', got {self.mode!r}")
        if self.task in ("denoise", "deblur"):
            from_name(self.task, sigma=self.sigma, kernel=self.kernel)  # checks sigma and the kernel spec

    def params(self) -> dict:
        """The parameters that decide a result (those of other tasks are left out)."""
        p = {"task": self.task, "preset": self.preset, "iterations": self.iterations, "seed": self.seed}
        if self.task == "upscale":
            p["scale"] = self.scale
        if self.task == "inpaint":
            p["mode"] = self.mode
        if self.task in ("inpaint", "reconstruct"):
            p["mask_known"] = self.mask_known
        if self.task == "deblur":
            p["kernel"] = self.kernel
            if self.kernel and Path(self.kernel).is_file():
                p["kernel_sha256"] = _sha256(Path(self.kernel).read_bytes())
        if self.task == "denoise" and self.sigma is not None:
            p["sigma"] = self.sigma
        return p


@dataclass
class Job:
    """One image to restore and everything the driver knows about it."""

    input: Path
    relpath: str  # the input's path under the common root, with forward slashes
    output: Path
    output_rel: str  # the output's path under the output folder: the job's identity in the manifest
    params: dict
    mask: Path | None = None
    flash: Path | None = None
    input_sha256: str | None = None
    problem: str | None = None  # known before running: e.g. no mask found, file unreadable
    attempts: int = 0

    @property
    def key(self) -> str:
        """A digest of the parameters, companions included."""
        return _sha256(json.dumps(self.params, sort_keys=True).encode())[:16]


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# --------------------------------------------------------------------------------------------
# Finding the images
# --------------------------------------------------------------------------------------------


def _abs(path) -> Path:
    """An absolute path, symbolic links kept as named (so the mirrored tree is the one shown)."""
    return Path(os.path.abspath(path))


def _is_inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def _is_companion(path: Path, task: str) -> bool:
    stem = path.stem
    return stem.endswith(MASK_SUFFIX) or (task == "flash" and stem.endswith(FLASH_SUFFIX))


def find_inputs(inputs, *, task: str = "denoise", exclude=()) -> tuple[list[Path], Path]:
    """The image files named by ``inputs`` and the folder their outputs are mirrored from.

    ``inputs`` are files, folders (searched recursively for image files, hidden names skipped)
    or glob patterns. Companion files (``*_mask.*``, and ``*_flash.*`` for the flash task) and
    anything inside the folders in ``exclude`` (the output folder, the masks folder) are left
    out. Returns the resolved files, sorted, and the common root of the inputs.
    """
    exclude = [_abs(e) for e in exclude]
    found: dict[Path, None] = {}
    anchors: list[Path] = []

    def consider(path: Path, named: bool) -> None:
        path = _abs(path)
        if any(_is_inside(path, e) for e in exclude) or _is_companion(path, task):
            return
        if not named and (path.suffix.lower() not in IMAGE_EXTENSIONS or path.name.startswith(".")):
            return
        found[path] = None

    def walk(folder: Path) -> None:
        for dirpath, dirnames, filenames in os.walk(folder, followlinks=False):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for name in filenames:
                consider(Path(dirpath) / name, named=False)

    for item in inputs:
        text = str(item)
        path = Path(text)
        if path.is_dir():
            anchors.append(_abs(path))
            walk(path)
        elif path.exists():
            anchors.append(_abs(path).parent)
            consider(path, named=True)
        elif glob.has_magic(text):
            matches = sorted(glob.glob(text, recursive=True))
            fixed = []  # the folder part before the first wildcard anchors the mirrored tree
            for part in path.parts:
                if glob.has_magic(part):
                    break
                fixed.append(part)
            anchors.append(_abs(Path(*fixed)) if fixed else Path.cwd())
            for m in matches:
                mp = Path(m)
                if mp.is_dir():
                    walk(mp)
                else:
                    consider(mp, named=False)
        else:
            raise DeepPriorError(f"{text}: no such file or folder")
    files = sorted(found)
    if not files:
        raise DeepPriorError("no input images found in " + ", ".join(str(i) for i in inputs))
    root = Path(os.path.commonpath([str(a) for a in anchors] + [str(f.parent) for f in files]))
    return files, root


def find_companion(image: Path, suffix: str, search: list[Path]) -> Path | None:
    """``NAME{suffix}.*`` (any image extension, .png first) in the first of ``search`` that has one."""
    stem = image.stem
    for folder in search:
        for name in (f"{stem}{suffix}", stem) if folder != image.parent else (f"{stem}{suffix}",):
            for ext in [".png"] + sorted(IMAGE_EXTENSIONS - {".png"}):
                candidate = folder / (name + ext)
                if candidate.is_file() and candidate != image:
                    return candidate
    return None


def plan(inputs, out_dir, settings: Settings, *, masks_dir=None) -> list[Job]:
    """The jobs of a batch: inputs found, companions paired, outputs placed, inputs hashed."""
    settings.check()
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise DeepPriorError(f"{out_dir}: --out must be a folder")
    for item in inputs:
        if Path(item).is_dir() and _is_inside(_abs(item), _abs(out_dir)):
            raise DeepPriorError(f"{item}: an input folder must not be (inside) the output folder {out_dir}")
    if masks_dir is not None:
        if not Path(masks_dir).is_dir():
            raise DeepPriorError(f"{masks_dir}: --masks must be a folder")
        masks_dir = _abs(masks_dir)
    exclude = [out_dir]
    if masks_dir is not None and not any(_is_inside(_abs(i), masks_dir) for i in inputs):
        exclude.append(masks_dir)  # a separate masks folder holds no inputs
    files, root = find_inputs(inputs, task=settings.task, exclude=exclude)
    base = settings.params()

    rels = [f.relative_to(root) for f in files]
    outs = [r.with_suffix(".png") for r in rels]
    clashes = {o for o, n in Counter(outs).items() if n > 1}  # photo.jpg and photo.png in one folder
    outs = [r.with_name(r.name + ".png") if o in clashes else o for r, o in zip(rels, outs)]

    jobs = []
    for path, rel, out_rel in zip(files, rels, outs):
        job = Job(path, rel.as_posix(), out_dir / out_rel, out_rel.as_posix(), dict(base))
        if settings.task in ("inpaint", "reconstruct", "flash"):
            suffix = FLASH_SUFFIX if settings.task == "flash" else MASK_SUFFIX
            what = "flash image" if settings.task == "flash" else "mask"
            search = [path.parent]
            if masks_dir is not None:
                search = [Path(masks_dir) / rel.parent, Path(masks_dir)] + search
            companion = find_companion(path, suffix, search)
            if companion is None:
                where = f" or in {masks_dir}" if masks_dir is not None else ""
                job.problem = f"no {what} found (looked for {path.stem}{suffix}.png beside it{where})"
            else:
                try:
                    job.params[f"{what.split()[0]}_sha256"] = _file_sha256(companion)
                except OSError as e:
                    job.problem = f"cannot read {what} {companion} ({e.strerror or e})"
                setattr(job, "flash" if settings.task == "flash" else "mask", companion)
        try:
            if not stat.S_ISREG(path.stat().st_mode):  # a named pipe would block the read, /dev/zero never end
                job.problem = "not a regular file"
            else:
                job.input_sha256 = _file_sha256(path)
        except OSError as e:
            job.problem = f"cannot read file ({e.strerror or e})"
        jobs.append(job)
    return jobs


# --------------------------------------------------------------------------------------------
# The manifest
# --------------------------------------------------------------------------------------------


class Manifest:
    """``OUT/manifest.jsonl``: one JSON record per finished job, the last one for a job wins.

    The file is opened for appending and locked for the whole run, so two batches cannot
    write into one output folder at once. A line cut short by a crash is ignored when read.
    """

    def __init__(self, out_dir):
        self.path = Path(out_dir) / MANIFEST
        self.records: dict[str, dict] = {}
        self._file = None

    def open(self) -> "Manifest":
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self.path, "a+b")
        except OSError as e:
            raise DeepPriorError(f"{self.path}: cannot open the manifest ({e.strerror or e})") from None
        try:
            import fcntl

            fcntl.flock(self._file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except ImportError:  # pragma: no cover - not POSIX
            pass
        except OSError:
            self._file.close()
            raise DeepPriorError(f"{self.path.parent}: another batch is writing to this folder") from None
        self._file.seek(0)
        data = self._file.read()
        for line in data.splitlines():
            try:
                rec = json.loads(line)
                self.records[rec["output"]] = rec
            except (ValueError, KeyError, TypeError):
                continue  # a line cut short by a crash
        if data and not data.endswith(b"\n"):
            self._write(b"\n")
        return self

    def close(self) -> None:
        if self._file is not None:
            self._file.close()  # also releases the lock
            self._file = None

    def __enter__(self):
        return self.open()

    def __exit__(self, *exc):
        self.close()

    def _write(self, data: bytes) -> None:
        self._file.write(data)
        self._file.flush()
        os.fsync(self._file.fileno())

    def append(self, record: dict) -> None:
        """Add a record durably: when this returns, a crash cannot lose it."""
        self._write(json.dumps(record, sort_keys=True).encode() + b"\n")
        self.records[record["output"]] = record

    def is_done(self, job: Job) -> bool:
        """True when the job was done with the same input and parameters, and its output exists."""
        rec = self.records.get(job.output_rel)
        return (
            rec is not None
            and rec.get("status") == "done"
            and rec.get("input_sha256") == job.input_sha256
            and rec.get("key") == job.key
            and job.output.is_file()
        )


# --------------------------------------------------------------------------------------------
# Running one job (anywhere)
# --------------------------------------------------------------------------------------------


def make_payload(job: Job, settings: Settings, threads: int | None, device: str = "auto") -> dict:
    """Everything :func:`run_job` needs, as plain data: the files travel as bytes."""
    payload = {
        "name": job.relpath,
        "settings": settings,
        "threads": threads,
        "device": device,
        "input": job.input.read_bytes(),
    }
    for what in ("mask", "flash"):
        path = getattr(job, what)
        payload[what] = path.read_bytes() if path is not None else None
    if settings.task == "deblur" and settings.kernel and Path(settings.kernel).is_file():
        payload["kernel_bytes"] = Path(settings.kernel).read_bytes()
    return payload


def run_job(payload: dict) -> dict:
    """Restore one image given as bytes; return the encoded PNG and a short report.

    Never raises for a problem with the job: the result says ``ok`` or carries a one-line
    ``error``, with ``retry`` False when the input itself is at fault (a
    :class:`DeepPriorError`). Interrupting it (Ctrl-C) raises :class:`KeyboardInterrupt`:
    a fit cut short is not a result.
    """
    from .restoration import restore

    s: Settings = payload["settings"]
    try:
        data = payload["input"]
        sha = _sha256(data)
        image = load_image(data, max_pixels=s.max_pixels)
        options = {"scale": s.scale, "mode": s.mode, "mask_known": s.mask_known, "sigma": s.sigma, "kernel": s.kernel}
        for what in ("mask", "flash"):
            if payload.get(what) is not None:
                try:
                    options[what] = load_image(payload[what], max_pixels=s.max_pixels)
                except DeepPriorError as e:
                    raise DeepPriorError(f"{what}: {e}") from None
        if payload.get("kernel_bytes") is not None:
            from .operators import parse_kernel

            options["kernel"] = parse_kernel(s.kernel, load=lambda _: load_image(payload["kernel_bytes"]))
        task = from_name(s.task, image_size=(image.height, image.width), **options)
        if payload.get("kernel_bytes") is not None:
            task = replace(task, spec=s.kernel)
        result = restore(
            image,
            task,
            s.preset,
            seed=s.seed,
            device=payload.get("device", "auto"),
            threads=payload.get("threads"),
            iterations=s.iterations,
        )
        if result.outcome.stop_reason == "interrupted":
            raise KeyboardInterrupt
        png = encode_image(result.image, "PNG")
    except DeepPriorError as e:
        return {"ok": False, "error": str(e), "retry": False, "host": socket.gethostname()}
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception as e:  # a bug or the machine (out of memory...): worth another try
        text = str(e).splitlines()[0][:200] if str(e) else ""
        return {"ok": False, "error": f"{type(e).__name__}: {text}".rstrip(": "), "retry": True,
                "host": socket.gethostname()}
    o = result.outcome
    return {
        "ok": True,
        "data": png,
        "input_sha256": sha,
        "iterations": o.iterations,
        "stopped_at": o.stopped_at,
        "stop_reason": o.stop_reason,
        "fit_s": round(o.elapsed_s, 3),
        "device": result.device,
        "threads": result.threads,
        "size": [result.image.width, result.image.height],
        "host": socket.gethostname(),
    }


# --------------------------------------------------------------------------------------------
# Executors: submit payloads, get results back as they finish
# --------------------------------------------------------------------------------------------


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


class InProcess:
    """Jobs one after another in this process (nothing to start; Ctrl-C stops the current fit)."""

    name = "local"

    def __init__(self):
        self.capacity = 1
        self.pending: deque = deque()

    def submit(self, job, payload):
        self.pending.append((job, payload))

    def next_result(self):
        job, payload = self.pending.popleft()
        return job, run_job(payload)

    def close(self, cancel=False):
        self.pending.clear()


def _worker_init(threads: int) -> None:
    """Worker process set-up: leave Ctrl-C to the driver, die with it, use ``threads`` threads."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:  # Linux: a worker must not outlive a driver killed with kill -9
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except Exception:
        pass
    import torch

    torch.set_num_threads(threads)


class ProcessPool:
    """``workers`` processes on this machine, each fitting one image at a time."""

    name = "local"

    def __init__(self, workers: int, threads: int):
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        self.capacity = workers
        self._args = (workers, threads)
        self._ctx = mp.get_context("spawn")  # fork and PyTorch's thread pools do not mix
        self._pool = ProcessPoolExecutor(workers, mp_context=self._ctx, initializer=_worker_init, initargs=(threads,))
        self._futures: dict = {}
        self._orphans: list = []

    def submit(self, job, payload):
        self._futures[self._pool.submit(run_job, payload)] = job

    def next_result(self):
        from concurrent.futures import FIRST_COMPLETED, wait
        from concurrent.futures.process import BrokenProcessPool

        done, _ = wait(list(self._futures), return_when=FIRST_COMPLETED)
        fut = next(iter(done))
        job = self._futures.pop(fut)
        try:
            return job, fut.result()
        except BrokenProcessPool:  # a worker died (killed, out of memory): start afresh
            self._restart()
            return job, {"ok": False, "error": "the worker process died", "retry": True, "host": socket.gethostname()}
        except Exception as e:  # e.g. a payload that could not be sent
            return job, {"ok": False, "error": f"{type(e).__name__}: {e}", "retry": True, "host": socket.gethostname()}

    def _restart(self):
        from concurrent.futures import ProcessPoolExecutor

        survivors = list(self._futures.items())
        self._pool.shutdown(wait=False, cancel_futures=True)
        workers, threads = self._args
        self._pool = ProcessPoolExecutor(workers, mp_context=self._ctx, initializer=_worker_init, initargs=(threads,))
        self._futures = {}
        self._orphans = survivors  # their payloads are gone with the pool; the driver resubmits

    def take_orphans(self):
        orphans, self._orphans = self._orphans, []
        return [job for _, job in orphans]

    def close(self, cancel=False):
        if cancel:
            for proc in list(getattr(self._pool, "_processes", {}).values()):
                proc.terminate()
        self._pool.shutdown(wait=not cancel, cancel_futures=True)


class RayCluster:
    """Each job (by default an image: :func:`run_job`; ``fn`` for other work) a Ray task;
    results stream back with ``ray.wait`` as they finish."""

    name = "ray"

    def __init__(self, address: str | None, cpus_per_job: int | None, njobs: int, device: str = "auto", fn=None):
        try:
            import ray
        except ImportError:
            raise DeepPriorError("the ray executor needs Ray: pip install 'deepprior[ray]'") from None
        import logging

        self.ray = ray
        self.started = False
        if not ray.is_initialized():
            kwargs = dict(include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
            try:
                if address:
                    ray.init(address=address, **kwargs)
                else:
                    ray.init(num_cpus=available_cores(), **kwargs)
            except Exception as e:
                where = f"join the Ray cluster at {address}" if address else "start a local Ray instance"
                first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                raise DeepPriorError(f"cannot {where}: {first}") from None
            self.started = True
        res = ray.cluster_resources()
        cpus = int(res.get("CPU", 0))
        self.gpus = int(res.get("GPU", 0)) if device != "cpu" else 0
        node_cpus = [int(n.get("Resources", {}).get("CPU", 0)) for n in ray.nodes() if n.get("Alive")]
        biggest = max(node_cpus, default=cpus)
        if cpus_per_job is None:
            cpus_per_job = 1 if self.gpus else max(1, min(biggest, cpus // max(1, min(njobs, cpus))))
        if cpus_per_job > biggest:
            self.close()
            raise DeepPriorError(f"{cpus_per_job} CPUs per job (--cpus-per-job; --threads for the tiles of one image): "
                                 f"no node of the Ray cluster has that many (largest: {biggest})")
        self.cpus_per_job = cpus_per_job
        slots = max(1, cpus // cpus_per_job)
        if self.gpus:
            slots = min(slots, self.gpus)
        self.slots = slots
        self.capacity = 2 * slots  # keep the next images on their way while the current ones fit
        self.cpus = cpus
        self._remote = ray.remote(fn or run_job).options(
            num_cpus=cpus_per_job, num_gpus=1 if self.gpus else 0, max_retries=0
        )
        self._refs: dict = {}

    def submit(self, job, *args, **kwargs):
        self._refs[self._remote.remote(*args, **kwargs)] = job

    def next_result(self):
        ray = self.ray
        ready, _ = ray.wait(list(self._refs), num_returns=1)
        ref = ready[0]
        job = self._refs.pop(ref)
        try:
            return job, ray.get(ref)
        except Exception as e:  # the task or its worker died: worth another try
            first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
            return job, {"ok": False, "error": f"Ray: {first}", "retry": True, "host": None}

    def close(self, cancel=False):
        ray = self.ray
        if cancel:
            for ref in list(self._refs):
                try:
                    ray.cancel(ref, force=True)
                except Exception:
                    pass
        self._refs = {}
        if self.started and ray.is_initialized():
            ray.shutdown()
            self.started = False


# --------------------------------------------------------------------------------------------
# The driver
# --------------------------------------------------------------------------------------------


@dataclass
class Summary:
    """How a batch went."""

    done: int = 0
    skipped: int = 0
    failed: int = 0
    interrupted: bool = False
    elapsed_s: float = 0.0
    executor: str = "local"
    workers: int = 1
    cpus_per_job: int = 1
    failures: list = field(default_factory=list)  # (input relpath, error)
    manifest: Path | None = None

    @property
    def exit_code(self) -> int:
        return 130 if self.interrupted else (1 if self.failed else 0)

    def line(self) -> str:
        s = f"batch: {self.done} done, {self.skipped} skipped, {self.failed} failed in {self.elapsed_s:.1f} s"
        s += f" ({self.executor}, {self.workers} at a time, {self.cpus_per_job} CPU each)"
        if self.interrupted:
            s += "; interrupted: run the same command again to finish"
        return s


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _record(job: Job, status: str, *, error=None, result=None, elapsed=None) -> dict:
    rec = {
        "input": str(job.input),
        "relpath": job.relpath,
        "input_sha256": job.input_sha256,
        "params": job.params,
        "key": job.key,
        "status": status,
        "error": error,
        "output": job.output_rel,
        "attempts": job.attempts,
        "time": _now(),
    }
    if elapsed is not None:
        rec["elapsed_s"] = round(elapsed, 3)
    if result is not None:
        rec["host"] = result.get("host")
        for k in ("output_sha256", "iterations", "stopped_at", "stop_reason", "fit_s", "device", "threads"):
            if k in result:
                rec[k] = result[k]
    return rec


def _remove_stale_parts(jobs) -> None:
    """Temporary files left by a run killed while writing (``.NAME.*.part``)."""
    for job in jobs:
        folder = job.output.parent
        if folder.is_dir():
            for stale in folder.glob(f".{glob.escape(job.output.name)}.*.part"):
                try:
                    stale.unlink()
                except OSError:
                    pass


class _View:
    """The progress bar over jobs (rich), with one line per finished job above it."""

    def __init__(self, console, total: int, quiet: bool):
        self.console = console
        self.progress = None
        self.quiet = quiet
        if console is None:
            return
        if not quiet:
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                                       TimeElapsedColumn, TimeRemainingColumn)

            self.progress = Progress(
                TextColumn("[bold]batch"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                TextColumn("ETA"), TimeRemainingColumn(), TextColumn("{task.fields[note]}"),
                console=console, transient=False,
            )
            self.progress.start()
            self.bar = self.progress.add_task("batch", total=total, note="")

    def line(self, text: str, always: bool = False):
        if self.console is not None and (always or not self.quiet):
            self.console.print(text, highlight=False, markup=False, soft_wrap=True)

    def advance(self, note: str = ""):
        if self.progress is not None:
            self.progress.update(self.bar, advance=1, note=note)

    def stop(self):
        if self.progress is not None:
            self.progress.stop()
            self.progress = None


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def run_batch(
    inputs,
    out_dir,
    settings: Settings,
    *,
    executor: str = "local",
    cpus_per_job: int | None = None,
    workers: int | None = None,
    retries: int = 0,
    masks_dir=None,
    ray_address: str | None = None,
    device: str = "auto",
    console=None,
    quiet: bool = False,
) -> Summary:
    """Restore every image named by ``inputs`` into ``out_dir``, skipping what a previous run did.

    Parameters
    ----------
    inputs : files, folders or glob patterns.
    settings : the task and fit options, the same for all images.
    executor : ``"local"`` (this machine: one job at a time, or ``cores // cpus_per_job``
        processes) or ``"ray"`` (each image a Ray task; ``ray_address`` joins a running
        cluster, otherwise a local one is started for the run).
    cpus_per_job : threads (and Ray CPUs) for each fit; by default the cores are shared out
        over the jobs.
    workers : local executor only: at most this many images at once (default: as many as
        ``cores // cpus_per_job``); 1 fits them one after another in this process.
    retries : how many more times a job that failed for a reason other than its input
        (a :class:`DeepPriorError`) is tried.
    console : a rich Console for the progress bar and per-job lines (None: silent).

    Returns a :class:`Summary`; its ``exit_code`` is 1 when any job failed.
    """
    _check_options(executor, cpus_per_job, workers, retries, ray_address)
    start = time.perf_counter()
    jobs = plan(inputs, out_dir, settings, masks_dir=masks_dir)
    summary = Summary(executor=executor)

    try:
        old_term = signal.signal(signal.SIGTERM, _interrupt)
    except ValueError:  # not the main thread
        old_term = None
    manifest = Manifest(out_dir).open()
    summary.manifest = manifest.path
    view = None
    pool = None
    try:
        todo = [job for job in jobs if not manifest.is_done(job)]
        summary.skipped = len(jobs) - len(todo)
        _remove_stale_parts(todo)
        runnable = [j for j in todo if j.problem is None]
        threads = cpus_per_job
        if runnable:
            pool = _make_pool(executor, len(runnable), cpus_per_job, workers, ray_address, device, summary)
            threads = summary.cpus_per_job

        view = _View(console, len(todo), quiet)
        if summary.skipped:
            view.line(f"skipping {summary.skipped} image(s) already done (see {manifest.path})")
        record = _Record(manifest, summary, view)
        for job in todo:
            if job.problem is not None:
                record(job, "failed", error=job.problem)
        if runnable:
            _run_jobs(runnable, pool, settings, threads, device, retries, record)
    except KeyboardInterrupt:
        summary.interrupted = True
    finally:
        if view is not None:
            view.stop()
        if pool is not None:
            pool.close(cancel=summary.interrupted)
        manifest.close()
        if old_term is not None:
            signal.signal(signal.SIGTERM, old_term)
    summary.elapsed_s = time.perf_counter() - start
    return summary


def _check_options(executor, cpus_per_job, workers, retries, ray_address) -> None:
    if executor not in EXECUTORS:
        raise DeepPriorError(f"unknown executor {executor!r}; choose local or ray")
    if cpus_per_job is not None and cpus_per_job < 1:
        raise DeepPriorError(f"--cpus-per-job must be at least 1, got {cpus_per_job}")
    if workers is not None and (workers < 1 or executor != "local"):
        raise DeepPriorError(f"--workers must be at least 1, got {workers}" if workers < 1
                             else "--workers goes with --executor local (Ray places the jobs itself)")
    if retries < 0:
        raise DeepPriorError(f"--retries must be 0 or more, got {retries}")
    if ray_address and executor != "ray":
        raise DeepPriorError("--ray-address goes with --executor ray")


def _make_pool(executor, n_jobs, cpus_per_job, workers, ray_address, device, summary: Summary):
    """The executor for ``n_jobs`` fits; records its threads per job and parallel slots in ``summary``."""
    if executor == "ray":
        pool = RayCluster(ray_address, cpus_per_job, n_jobs, device)
        summary.cpus_per_job, summary.workers = pool.cpus_per_job, pool.slots
        return pool
    cores = available_cores()
    per = cpus_per_job or max(1, cores // max(1, min(n_jobs, cores)))
    n = max(1, min(cores // per, n_jobs, workers or n_jobs))
    summary.cpus_per_job, summary.workers = per, n
    return InProcess() if n == 1 else ProcessPool(n, per)


class _Record:
    """Ends a job: one manifest line, the summary's counts, a line on the console."""

    def __init__(self, manifest: Manifest, summary: Summary, view: _View):
        self.manifest, self.summary, self.view = manifest, summary, view

    def __call__(self, job: Job, status: str, error=None, result=None, elapsed=None) -> None:
        self.manifest.append(_record(job, status, error=error, result=result, elapsed=elapsed))
        if status == "done":
            self.summary.done += 1
            took = result.get("fit_s", elapsed) if result else elapsed
            self.view.line(f"done    {job.relpath} -> {job.output_rel} ({took:.1f} s)")
        else:
            self.summary.failed += 1
            self.summary.failures.append((job.relpath, error))
            self.view.line(f"failed  {job.relpath}: {error}", always=True)
        self.view.advance(job.relpath)


def _run_jobs(runnable: list[Job], pool, settings: Settings, threads, device, retries: int, record: _Record) -> None:
    """Keep ``pool`` full until every job has ended: submit, collect, retry what may be retried,
    and write each result (atomically) as it arrives, so an interruption loses no finished image."""
    queue = deque(runnable)
    started: dict[int, float] = {}
    inflight = 0
    while queue or inflight:
        while queue and inflight < pool.capacity:
            job = queue.popleft()
            job.attempts += 1
            try:
                payload = make_payload(job, settings, threads, device)
            except OSError as e:
                record(job, "failed", error=f"cannot read file ({e.strerror or e})")
                continue
            started[id(job)] = time.perf_counter()
            pool.submit(job, payload)
            inflight += 1
        if not inflight:
            continue
        job, res = pool.next_result()
        inflight -= 1
        if isinstance(pool, ProcessPool):
            for orphan in pool.take_orphans():  # lost with a dead worker pool: queue them again
                inflight -= 1
                orphan.attempts -= 1  # not their fault
                queue.appendleft(orphan)
        elapsed = time.perf_counter() - started.pop(id(job))
        if not res["ok"]:
            if res.get("retry") and job.attempts <= retries:
                record.view.line(f"retry   {job.relpath}: {res['error']}")
                queue.append(job)
                continue
            record(job, "failed", error=res["error"], result=res, elapsed=elapsed)
            continue
        _store(job, res, record, elapsed)


def _store(job: Job, res: dict, record: _Record, elapsed: float) -> None:
    """Write a finished job's image where it belongs and record it as done (or failed to write)."""
    data = res.pop("data")
    job.input_sha256 = res.get("input_sha256", job.input_sha256)  # the bytes actually restored
    res["output_sha256"] = _sha256(data)
    try:
        job.output.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(job.output, data)
    except (DeepPriorError, OSError) as e:
        record(job, "failed", error=str(e), result=res, elapsed=elapsed)
        return
    record(job, "done", result=res, elapsed=elapsed)
