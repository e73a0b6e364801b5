"""The wiring layer between the command line and the system: frozen settings (settings.py), the one
place that opens a backend (backends.py), and runs of a CMR or M-mode job from settings (jobs.py)."""

from echodeploy.wiring.backends import open_backend
from echodeploy.wiring.jobs import merge_runs, open_engine, run_job
from echodeploy.wiring.settings import BackendSettings, CmrRun, EngineSettings, MModeRun, TorchSettings

__all__ = ["BackendSettings", "CmrRun", "EngineSettings", "MModeRun", "TorchSettings", "merge_runs", "open_backend",
           "open_engine", "run_job"]
