"""Size and browser render time of report.html for generated 10,000-row runs (cmr and mmode).

    python -m echodeploy.benchmarks.report_size --rows 10000 --out bench_output/report_size

The run folders are written by the pipelines' own output code (predictions, studies, metrics;
features_stats.csv and the journal's beats; per-file figures drawn for the files whose figures the
page embeds, and one more) from generated records: 97% ok, 2% failed with a few reasons, 1% pending.
Then the page is built, and opened in Debian's headless Chromium: load (navigation to the load
event), layout of the whole page and a full-page screenshot are timed, best of `--repeats`.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd

from echodeploy.benchmarks.browser import chromium, open_page
from echodeploy.client.results import report
from echodeploy.client.results.mmode_features import beat_stats, beat_table, good_events, window_columns
from echodeploy.client.results.mmode_figures import draw_figures, figure_stem
from echodeploy.client.runs.cmr import CmrOptions, CmrPipeline, row_key
from echodeploy.client.runs.journal import Journal
from echodeploy.client.runs.mmode import MModeOptions, MModePipeline
from echodeploy.client.runs.record import machine, record_session
from echodeploy.client.runs.runner import JOURNAL
from echodeploy.samples import synthetic_mmode

FAILURES = (("unreadable", "cannot decode the video (OpenCV read no frame)"),
            ("too_short", "video has 12 frames, a clip needs 32"), ("missing", "no such file"))


def _status(rng: np.random.Generator) -> tuple[str, str]:
    draw = rng.random()
    if draw < 0.97:
        return "ok", ""
    if draw < 0.99:
        return FAILURES[rng.integers(len(FAILURES))]
    return "pending", ""


def _record_run(out: Path, pipeline, rows: int, done: int, seconds: float) -> None:
    """run.json as a finished run leaves it, timed as `seconds`."""
    models = {"cmr": {f"cmr_{v.lower()}_scar": {"echodeploy.view": v, "echodeploy.task": "scar",
                                                 "echodeploy.precision": "fp32", "echodeploy.untrained": "false",
                                                 "echodeploy.checkpoint_sha256": "ab" * 32}
                      for v in ("A4C", "A2C", "PLAX")},
              "mmode": {name: {"echodeploy.precision": "fp32", "echodeploy.untrained": "false",
                               "echodeploy.checkpoint_sha256": "cd" * 32} for name in ("mmode_lvid", "mmode_quality")}}
    recorder = SimpleNamespace(name="openvino", models=models[pipeline.name])
    with record_session(out, pipeline, recorder, "local", rows, 0) as session:
        session.processed = done
    record = json.loads((out / "run.json").read_text())
    record["sessions"][-1].update(seconds=seconds, rows_per_s=round(done / seconds, 4))
    record.update(seconds=seconds, rows_per_s=round(done / seconds, 4))
    (out / "run.json").write_text(json.dumps(record))


def cmr_run(out: Path, rows: int, seed: int = 0) -> Path:
    """A cmr run of `rows` videos (two per study, three views) with TARGET for scar."""
    rng = np.random.default_rng(seed)
    views = np.array(["A4C", "A2C", "PLAX"])[rng.integers(0, 3, rows)]
    target = (np.arange(rows) // 2) % 3 == 0
    inputs = pd.DataFrame({"Study_Unique_ID": [f"S{i // 2:05d}" for i in range(rows)],
                           "Video_Unique_ID": [f"V{i:05d}" for i in range(rows)], "TARGET": target.astype(int),
                           "path": [f"/data/echo/V{i:05d}.avi" for i in range(rows)], "view": views, "path_error": ""})
    pipeline = CmrPipeline(inputs, CmrOptions(tasks=("scar",)))
    records = {}
    for i, row in inputs.iterrows():
        status, error = _status(rng)
        if status == "pending":
            continue
        key = row_key(i, row)
        probability = 1 / (1 + np.exp(-(rng.normal(-1, 1) + 1.5 * target[i])))
        records[key] = {"key": key, "fingerprint": "x", "status": status, "error": error, "notes": "", "decode_s": 0.01,
                        "clips": int(status == "ok"), "untrained": False,
                        "outputs": {"scar_prob": probability} if status == "ok" else {}}
    out.mkdir(parents=True, exist_ok=True)
    pipeline.write_outputs(records, out, {"untrained": False, "view_models": {}})
    _record_run(out, pipeline, rows, len(records), seconds=rows / 24.0)
    return out


def _file_state(rng: np.random.Generator, length: int = 2400):
    """A generated file's trace, LVID profile, quality windows and beats (what inference gives)."""
    trace, mask = synthetic_mmode(length=length, heart_rate_bpm=rng.uniform(420, 560), seed=int(rng.integers(1000)))
    counts = mask.sum(0).astype(np.float32)
    mean_rows = np.array([np.flatnonzero(column).mean() for column in mask.T], np.float32)
    spans = [(start, min(start + 200, length)) for start in range(0, length, 200)]
    probabilities = rng.uniform(0.2, 1, len(spans))
    quality = window_columns(length, spans, probabilities)
    beats = beat_table(counts * 0.0115, 0.00083334, quality, all_events=True)
    return trace, counts, mean_rows, spans, probabilities, quality, beats


def mmode_run(out: Path, rows: int, figures: int, seed: int = 0) -> Path:
    """An mmode run of `rows` files; the first `figures` ok files get their four figures drawn."""
    rng = np.random.default_rng(seed)
    inputs = pd.DataFrame({"file": [f"cohort/mouse{i:05d}.dcm" for i in range(rows)],
                           "path": [f"/data/mmode/cohort/mouse{i:05d}.dcm" for i in range(rows)], "mass_g": 24.0})
    pipeline = MModePipeline(inputs, MModeOptions(figures=False))
    states = [_file_state(rng) for _ in range(16)]  # reused: beat detection is not what is measured
    out.mkdir(parents=True, exist_ok=True)
    drawn = 0
    with Journal(out / JOURNAL) as journal:
        for i, path in enumerate(inputs["path"]):
            status, error = _status(rng)
            if status == "pending":
                continue
            record = {"key": f"{i}|{path}", "fingerprint": "x", "status": status, "error": error, "notes": "",
                      "untrained": False, "stats": {}, "beats": []}
            if status == "ok":
                trace, counts, mean_rows, spans, probabilities, quality, beats = states[i % len(states)]
                good = good_events(beats)
                record["stats"] = {"good_windows": int((probabilities > 0.5).sum()), "windows": len(spans),
                                   "duration_s": 2.0, **beat_stats(good)}
                record["beats"] = beats.to_dict("records")
                if drawn < figures:
                    draw_figures(out / "figures", figure_stem(inputs.at[i, "file"]), trace, 0.00083334, 0.0115,
                                 counts, mean_rows, spans, probabilities, quality > 0.5, good, False)
                    drawn += 1
            journal.append([record])
        pipeline.write_outputs(journal.records, out, {"untrained": False})
    _record_run(out, pipeline, rows, len(journal.records), seconds=rows * 1.8)
    return out


def measure(folder: Path, repeats: int) -> dict:
    """Build time, page size, and Chromium's load, layout and screenshot times (best of `repeats`)."""
    start = time.perf_counter()
    page_path = report.build_report(folder)
    built = time.perf_counter() - start
    timings = []
    with chromium() as browser:
        for _ in range(repeats):
            start = time.perf_counter()
            page, problems = open_page(browser, page_path)
            loaded = time.perf_counter() - start
            height = page.evaluate("document.documentElement.scrollHeight")
            laid_out = time.perf_counter() - start
            page.screenshot(full_page=True, type="jpeg", quality=60)
            timings.append((loaded, laid_out, time.perf_counter() - start, height, problems))
            page.close()
    loaded, laid_out, shot, height, problems = min(timings)
    return {"folder": str(folder), "rows": int(json.loads((folder / "run.json").read_text())["rows"]),
            "bytes": page_path.stat().st_size, "build_s": round(built, 2), "load_s": round(loaded, 3),
            "layout_s": round(laid_out, 3), "screenshot_s": round(shot, 3), "page_height_px": height,
            "problems": problems}


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("bench_output/report_size"))
    args = parser.parse_args(argv)
    results = [measure(cmr_run(args.out / "cmr", args.rows), args.repeats),
               measure(mmode_run(args.out / "mmode", args.rows, report.FIGURE_FILES + 1), args.repeats)]
    print(f"processor: {machine()['cpu']}")
    print(f"{'run':6} {'rows':>7} {'size':>9} {'build':>7} {'load':>7} {'layout':>7} {'screenshot':>10}  problems")
    for name, r in zip(("cmr", "mmode"), results):
        print(f"{name:6} {r['rows']:7,} {r['bytes'] / 2**20:7.2f}MiB {r['build_s']:6.2f}s {r['load_s']:6.3f}s "
              f"{r['layout_s']:6.3f}s {r['screenshot_s']:9.3f}s  {len(r['problems'])}")
    (args.out / "report_size.json").write_text(json.dumps(results, indent=1))
    return results


if __name__ == "__main__":
    main()
