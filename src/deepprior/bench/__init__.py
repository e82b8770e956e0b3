"""The evaluation harness: benchmark suites, classical baselines, a runner and a report.

``deepprior bench SUITE`` is the command-line shell over :func:`run`; the pieces are

* :mod:`.suites`: the images (sha256-checked), their seeded degradations and the metrics;
* :mod:`.baselines`: classical methods (bicubic, Lanczos, BM3D, NLM, TV, Telea, Navier-Stokes,
  biharmonic) and the method registry;
* :mod:`.realesrgan`: Real-ESRGAN x4plus in plain PyTorch, read from ncnn weights;
* :mod:`.runner`: running (image, method) pairs with resume, writing results.csv/json;
* :mod:`.report`: report.md with tables against the paper's numbers, and figures;
* :mod:`.speed` and :mod:`.stopping`: ``deepprior bench speed`` (fast against paper preset: time,
  quality at equal time, peak memory) and ``deepprior bench stopping`` (automatic stopping
  against the true PSNR peak), over :mod:`.resumable` result files; :mod:`.app`: ``deepprior
  bench app`` (the web app under load from many clients); :mod:`.photo`: ``deepprior bench
  photo`` (a 12-megapixel photo denoised: time, memory, PSNR). :func:`measure` runs them.
"""

from __future__ import annotations

from pathlib import Path

from .suites import find_data_dir, get_suite, suite_names


def run(suite_name: str, *, data=None, set_name: str | None = None, out=None, **options) -> tuple[dict, Path]:
    """Run a suite and write its report; returns (results, report path).

    ``options`` go to :func:`.runner.run_bench` (methods, preset, seed, iters, names, limit,
    resume, weights, threads, progress, dip_callback, log).
    """
    from . import runner, report, suites

    suite = get_suite(suite_name, set_name)
    data_dir = find_data_dir(data)
    if out is None:
        out = Path("bench-out") / (suite.name + ("" if set_name in (None, "Set5") else f"-{set_name}"))
    results = runner.run_bench(suite, data_dir, Path(out), **options)
    n_total = len(suites.suite_files(suite, suites.read_manifest(data_dir)))
    path = report.write_report(Path(out), results, suite, n_images_total=n_total)
    return results, path


#: The measurement benchmarks, run by :func:`measure` rather than :func:`run`.
MEASURES = ("speed", "stopping", "app", "photo")


def measure(kind: str, *, data=None, out=None, **options) -> tuple[dict, Path]:
    """Run ``bench speed``, ``bench stopping``, ``bench app`` or ``bench photo``; returns (results,
    path of the markdown tables).

    ``options`` go to :func:`.speed.run_speed`, :func:`.stopping.run_stopping`,
    :func:`.app.run_app_load` (which needs no data folder) or :func:`.photo.run_photo`.
    """
    from . import app, photo, speed, stopping

    mod = {"speed": speed, "stopping": stopping, "app": app, "photo": photo}.get(kind)
    if mod is None:
        from ..errors import DeepPriorError

        raise DeepPriorError(f"unknown benchmark {kind!r}; choose one of {', '.join(MEASURES)}")
    out = Path(out) if out is not None else Path("bench-out") / kind
    if kind == "app":
        results = app.run_app_load(out, **options)
    elif kind == "photo":
        results = photo.run_photo(data, out, **options)
    else:
        fn = speed.run_speed if kind == "speed" else stopping.run_stopping
        results = fn(data, out, **options)
    return results, out / mod.MARKDOWN


def measure_tables(kind: str, results: dict) -> list:
    """The tables of a :func:`measure` result, as rich Tables for the terminal."""
    from . import app, photo, resumable, speed, stopping

    mod = {"speed": speed, "stopping": stopping, "app": app, "photo": photo}[kind]
    return resumable.to_rich(mod.tables(results))


__all__ = ["run", "measure", "measure_tables", "MEASURES", "get_suite", "suite_names", "find_data_dir"]
