"""`serve`: a local tritonserver on a cpu- or gpu-torch-target repository."""

from __future__ import annotations

from typing import Annotated

import typer

from echodeploy.cli.app import command
from echodeploy.cli.options import Repository, ServerEnv
from echodeploy.client.tritonserver import DEFAULT_SERVER_ENV
from echodeploy.errors import EchodeployError
from echodeploy.repository import DEFAULT_REPOSITORY


@command()
def serve(
    repository: Repository = DEFAULT_REPOSITORY,
    host: Annotated[str, typer.Option(help="Address to bind (loopback unless you mean to expose it).")] = "127.0.0.1",
    http_port: Annotated[int, typer.Option(help="HTTP port.")] = 8000,
    grpc_port: Annotated[int, typer.Option(help="gRPC port.")] = 8001,
    metrics_port: Annotated[int, typer.Option(help="Metrics port.")] = 8002,
    server_env: ServerEnv = DEFAULT_SERVER_ENV,
    setup: Annotated[bool, typer.Option(help="Create the server environment if missing.")] = True,
):
    """Serve a cpu- or gpu-torch-target repository with a local tritonserver until Ctrl-C."""
    try:
        _serve(repository, host, http_port, grpc_port, metrics_port, server_env, setup)
    except KeyboardInterrupt:
        typer.echo("stopped")


def _serve(repository, host: str, http_port: int, grpc_port: int, metrics_port: int, server_env, setup: bool) -> None:
    import time

    from echodeploy.client.tritonserver import TritonServer, ensure_server_env, has_torch

    if not (repository / "TARGET").exists():
        raise EchodeployError(f"{repository} has no Triton configs: run `echodeploy export ... --target cpu`")
    torch_models = (repository / "TARGET").read_text().strip() == "gpu-torch"
    if setup:
        ensure_server_env(server_env, torch=torch_models)
    elif torch_models and not has_torch(server_env):
        raise EchodeployError(f"{repository} is a gpu-torch repository and {server_env} has no torch: "
                              "drop --no-setup, or install torch there")
    server = TritonServer(repository, env=server_env, host=host, http_port=http_port,
                          grpc_port=grpc_port, metrics_port=metrics_port)
    with server:
        typer.echo(f"tritonserver ready: grpc {server.grpc_url}  http http://{server.http_url}  "
                   f"metrics http://{host}:{server.metrics_port}/metrics  (Ctrl-C stops)")
        typer.echo(f"use it: echodeploy cmr MANIFEST --backend triton --url {server.grpc_url} --out DIR")
        while server.running:
            time.sleep(0.5)
        raise EchodeployError(f"tritonserver stopped unexpectedly:\n{server.log_tail()}")
