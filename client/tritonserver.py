"""A local tritonserver (from the nvidia-pytriton wheel) in one small class.

The server runs in its own virtual environment (`.venv-server` by default): nvidia-pytriton
pins numpy<2, and a Python-backend stub that imports numpy 2 returns empty tensors
without any error. The stub's interpreter resolves `python3` on PATH, so the server venv
goes first on PATH; its bundled libraries and libpython go on LD_LIBRARY_PATH.
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from echodeploy.errors import BackendError

DEFAULT_SERVER_ENV = Path(".venv-server")
SERVER_REQUIREMENTS = ("nvidia-pytriton==0.7.0", "numpy<2", "onnxruntime>=1.18")
SERVER_TORCH = ("torch==2.13.0", "numpy<2")  # the gpu-torch target's models; pinned as in the Makefile
LOOPBACK = "127.0.0.1"
# Triton targets whose configs need backends the nvidia-pytriton server lacks (it has the Python backend only)
NGC_ONLY_TARGETS = {
    "gpu": "the ONNX Runtime (or TensorRT) backend on a GPU",
    "openvino": "the OpenVINO backend",
}


def free_port(host: str = LOOPBACK) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def has_torch(env: Path) -> bool:
    return subprocess.run([str(Path(env) / "bin" / "python"), "-c", "import torch"], capture_output=True).returncode == 0


def ensure_server_env(env: Path = DEFAULT_SERVER_ENV, torch: bool = False) -> Path:
    """Create the server's virtual environment once (numpy 1.x, nvidia-pytriton, onnxruntime);
    `torch` adds PyTorch for gpu-torch repositories when the environment lacks it."""
    env = Path(env).absolute()
    if not (env / ".installed").exists():
        print(f"creating the Triton server environment in {env} (one time)", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "venv", str(env)], check=True)
        subprocess.run([str(env / "bin" / "pip"), "install", "--quiet", *SERVER_REQUIREMENTS], check=True)
        (env / ".installed").touch()
    if torch and not has_torch(env):
        print(f"adding torch to the Triton server environment in {env} (one time)", file=sys.stderr)
        subprocess.run([str(env / "bin" / "python"), "-m", "pip", "install", "--quiet", *SERVER_TORCH], check=True)
    return env


@dataclass(frozen=True)
class _ServerInstall:
    binary: Path
    python_backend: Path
    stub: Path
    library_path: str

    @classmethod
    def find(cls, env: Path) -> _ServerInstall:
        python = env / "bin" / "python"
        if not python.exists():
            raise BackendError(f"{env}: no server environment; run `echodeploy serve --setup` or `make server-env`")
        probe = subprocess.run(
            [str(python), "-c", "import sys, sysconfig, pytriton, os; "
             "print(os.path.dirname(pytriton.__file__)); print(sysconfig.get_config_var('LIBDIR')); "
             "print(f'{sys.version_info[0]}.{sys.version_info[1]}')"],
            capture_output=True, text=True)
        if probe.returncode:
            raise BackendError(f"{env}: nvidia-pytriton is not installed there ({probe.stderr.strip()[-200:]})")
        package, libdir, version = probe.stdout.split()
        root = Path(package) / "tritonserver"
        libs = Path(package).parent / "nvidia_pytriton.libs"
        return cls(binary=root / "bin" / "tritonserver", python_backend=root / "backends" / "python",
                   stub=root / "python_backend_stubs" / version / "triton_python_backend_stub",
                   library_path=f"{libs}:{libdir}")


def _die_with_parent() -> None:
    """Ask Linux to SIGTERM the server when the thread that started it ends (start it from one that lives)."""
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def refuse_ngc_only_target(repository: Path) -> None:
    """A BackendError naming what to do when the repository's target needs an NGC tritonserver."""
    marker = repository / "TARGET"
    target = marker.read_text().strip() if marker.is_file() else ""
    if target in NGC_ONLY_TARGETS:
        raise BackendError(
            f"{repository} is a {target}-target repository: its models need {NGC_ONLY_TARGETS[target]}, "
            "which only the NGC tritonserver image has (docker compose up, README 'GPU nodes'); "
            "the local server runs `echodeploy export --target cpu` or `--target gpu-torch` repositories")


@dataclass
class TritonServer:
    """Start, wait for, and stop a tritonserver bound to `host` (loopback by default)."""

    repository: Path
    env: Path = DEFAULT_SERVER_ENV
    host: str = LOOPBACK
    http_port: int = 0
    grpc_port: int = 0
    metrics_port: int = 0
    log_path: Path | None = None
    extra_args: tuple[str, ...] = ()
    _process: subprocess.Popen | None = field(default=None, init=False, repr=False)
    _workdir: tempfile.TemporaryDirectory | None = field(default=None, init=False, repr=False)

    @property
    def grpc_url(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"{self.host}:{self.http_port}"

    def start(self, timeout: float = 180) -> TritonServer:
        if self._process is not None:
            raise BackendError("this server is already running")
        refuse_ngc_only_target(Path(self.repository))
        install = _ServerInstall.find(Path(self.env).absolute())
        self._workdir = tempfile.TemporaryDirectory(prefix="echodeploy-triton-")
        backends = Path(self._workdir.name) / "backends"
        (backends / "python").mkdir(parents=True)
        for source in (install.python_backend / "libtriton_python.so",
                       install.python_backend / "triton_python_backend_utils.py", install.stub):
            (backends / "python" / source.name).symlink_to(source)
        self.http_port = self.http_port or free_port(self.host)
        self.grpc_port = self.grpc_port or free_port(self.host)
        self.metrics_port = self.metrics_port or free_port(self.host)
        self.log_path = Path(self.log_path or Path(self._workdir.name) / "tritonserver.log")
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONHOME", "PYTHONPATH")}
        env["PATH"] = f"{Path(self.env).absolute() / 'bin'}:{env.get('PATH', '')}"
        env["VIRTUAL_ENV"] = str(Path(self.env).absolute())
        env["LD_LIBRARY_PATH"] = install.library_path + (f":{env['LD_LIBRARY_PATH']}" if env.get("LD_LIBRARY_PATH") else "")
        command = [
            str(install.binary), "--model-repository", str(Path(self.repository).absolute()),
            "--backend-directory", str(backends),
            "--http-address", self.host, "--http-port", str(self.http_port),
            "--grpc-address", self.host, "--grpc-port", str(self.grpc_port),
            "--metrics-address", self.host, "--metrics-port", str(self.metrics_port),
            "--allow-gpu-metrics=false", "--exit-timeout-secs", "10", *self.extra_args,
        ]
        log = open(self.log_path, "w")
        self._process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env,
                                         preexec_fn=_die_with_parent)
        log.close()
        try:
            self._wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        url = f"http://{self.http_url}/v2/health/ready"
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise BackendError(f"tritonserver exited with code {self._process.returncode}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass  # not up yet
            time.sleep(0.25)
        raise BackendError(f"tritonserver not ready after {timeout:.0f} s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(Path(self.log_path).read_text(errors="replace").splitlines()[-lines:])
        except (OSError, TypeError):
            return "(no log)"

    def stop(self, timeout: float = 20) -> None:
        """SIGINT, wait, then kill; safe to call twice."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if self._workdir is not None:
            if self.log_path and Path(self._workdir.name) in self.log_path.parents:
                self.log_path = None  # the default log goes with its folder; a restart makes a new one
            self._workdir.cleanup()
            self._workdir = None

    def kill(self) -> None:
        """SIGKILL the server, as a crash would (fault injection); `start()` brings it back on the same ports."""
        if self._process is not None:
            self._process.kill()
            self._process.wait()
        self.stop()

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def __enter__(self) -> TritonServer:
        return self.start() if self._process is None else self

    def __exit__(self, *exc) -> None:
        self.stop()
