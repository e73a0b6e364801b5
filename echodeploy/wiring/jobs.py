"""Run a CMR or M-mode job from its settings: read the inputs, open the backend, run the rows on the
engine, apply the study model; and merge a sharded run. What the CLI and the `watch` service call."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from echodeploy.backends.base import Backend
from echodeploy.specs import MMODE_LVID, MMODE_QUALITY, VIEWS, cmr_model, mmode_model
from echodeploy.wiring.backends import for_workers, open_backend
from echodeploy.wiring.settings import BackendSettings, CmrRun, EngineSettings, MModeRun

if TYPE_CHECKING:
    from echodeploy.client.runs.runner import Pipeline, RunSummary

Engine = Callable[["Pipeline", Backend], "RunSummary"]


def open_engine(engine: EngineSettings, backend: BackendSettings, out: Path, workers: int) -> Engine:
    """`run(pipeline, backend) -> RunSummary` on the chosen engine, for the whole input or one shard;
    checked (Ray installed) before any input is read. Ray actors open their own backend from
    picklable settings with `open_backend`."""
    from echodeploy.client.runs.runner import run_bulk

    if engine.name == "local":
        def run(pipeline: Pipeline, opened: Backend) -> RunSummary:
            return run_bulk(pipeline, opened, out, workers)
    else:
        from echodeploy.client.runs.ray_engine import RayOptions, import_ray, run_ray

        import_ray()
        options = RayOptions(address=engine.ray_address, workers=max(workers, 1), actors=engine.actors,
                             block_rows=engine.ray_block_rows)

        def run(pipeline: Pipeline, opened: Backend) -> RunSummary:
            factory = functools.partial(open_backend, for_workers(backend, opened), say=_quiet)
            return run_ray(pipeline, opened, factory, out, options)
    if engine.shard is None:
        return run
    from echodeploy.client.runs.shards import run_shard

    return lambda pipeline, opened: run_shard(pipeline, engine.shard, opened, out, lambda p: run(p, opened))


def _quiet(line: str) -> None:
    """Actors do not announce their backend: the driver did."""


def run_job(job: CmrRun | MModeRun, backend: BackendSettings, engine: EngineSettings = EngineSettings(),
            say: Callable[[str], None] = print) -> RunSummary:
    """Run every unfinished row of `job` into `job.out` (resuming what is there) and return its summary.
    Bad input becomes a row status; infrastructure failures raise EchodeployError."""
    run = open_engine(engine, backend, job.out, job.options.workers)
    pipeline, probe = _pipeline(job)
    opened = open_backend(backend, probe, say)
    try:
        check_study_model(pipeline, opened)
        return with_study_model(run(pipeline, opened))
    finally:
        opened.close()


def _pipeline(job: CmrRun | MModeRun) -> tuple[Pipeline, list]:
    """The job's pipeline on its inputs, and the specs an `auto` backend is chosen on."""
    if isinstance(job, CmrRun):
        from echodeploy.client.runs.cmr import CmrPipeline
        from echodeploy.client.runs.inputs import read_inputs

        inputs = read_inputs(job.source, job.view, job.data_root, job.allow_outside_root)
        views = [v for v in inputs["view"].dropna().unique() if v in VIEWS][:1]
        return CmrPipeline(inputs, job.options), [cmr_model(v, task) for v in views for task in job.options.tasks]
    from echodeploy.client.runs.mmode import MModePipeline, read_mmode_inputs

    inputs = read_mmode_inputs(job.source, job.mass_g, job.mass_csv)
    return (MModePipeline(inputs, job.options),
            [mmode_model(name, job.options.bn_mode) for name in (MMODE_LVID, MMODE_QUALITY)])


def check_study_model(pipeline: Pipeline, backend: Backend) -> None:
    """A cmr run's study model against the view models served, before any inference."""
    study_model = getattr(pipeline.options, "study_model", None)
    if study_model is None:
        return
    from echodeploy.analysis.study_model import check_study_model as check
    from echodeploy.client.runs.cmr import view_model_ids

    check(study_model, view_model_ids(backend, pipeline.views, pipeline.options.tasks), pipeline.options.tasks)


def with_study_model(summary: RunSummary) -> RunSummary:
    """A finished cmr run's (or merge's) summary, its study model (if it has one) applied to its outputs."""
    study_model = getattr(summary.options, "study_model", None)
    if study_model is None:
        return summary
    from echodeploy.analysis.study_model import apply_study_model

    return dataclasses.replace(summary, metrics=apply_study_model(summary.out_dir, study_model))


def merge_runs(shards: list[Path], out: Path) -> RunSummary:
    """The files one unsharded run writes, from the folders of its shards (study model applied)."""
    from echodeploy.client.runs.shards import merge_shards

    return with_study_model(merge_shards(shards, out))
