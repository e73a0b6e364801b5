"""Triton backend: batched gRPC (or HTTP) requests to one or more tritonservers.

A batch is split into chunks of at most the model's `max_batch_size`; chunks go out
concurrently (at most `max_in_flight` at a time, spread round-robin over the servers)
and are reassembled in order. Unavailable or overloaded servers are retried with
exponential backoff until `retry_seconds` is spent; a request the server rejects
(shape, dtype) raises `RequestError` with the server's reason. With the server on this
host, inputs travel through system shared memory instead of the socket.
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from echodeploy.client.backends import ModelInfo

from echodeploy.errors import BackendError, RequestError

log = logging.getLogger(__name__)

RETRYABLE = ("UNAVAILABLE", "RESOURCE_EXHAUSTED", "DEADLINE_EXCEEDED", "Socket closed",
             "failed to connect", "Connection refused", "Broken pipe", "Connection reset",
             "exceeds maximum queue size", "Server is not ready")
LOCAL_HOSTS = ("127.0.0.1", "localhost", "[::1]")


def _is_retryable(exc: Exception) -> bool:
    text = f"{getattr(exc, 'status', lambda: '')()} {exc}"
    return any(marker in text for marker in RETRYABLE)


class TritonBackend:
    name = "triton"

    def __init__(self, urls: list[str], protocol: str = "grpc", max_in_flight: int = 4,
                 timeout_s: float = 120.0, retry_seconds: float = 60.0, shared_memory: bool | None = None):
        if protocol not in ("grpc", "http"):
            raise BackendError(f"protocol must be grpc or http, got {protocol!r}")
        if protocol == "grpc":
            import tritonclient.grpc as module
        else:
            import tritonclient.http as module
        self._module, self.protocol = module, protocol
        self.urls = list(urls)
        self.max_in_flight = max(1, max_in_flight)
        self.timeout_s, self.retry_seconds = timeout_s, retry_seconds
        self._local = threading.local()
        self._next_url = itertools.cycle(self.urls)
        self._url_lock = threading.Lock()
        self._pool = ThreadPoolExecutor(self.max_in_flight, thread_name_prefix="triton")
        self._info: dict[str, ModelInfo] = {}
        self._ready: set[tuple[str, str]] = set()
        if shared_memory is None:
            shared_memory = protocol == "grpc" and all(u.split(":")[0] in LOCAL_HOSTS for u in self.urls)
        self.shared_memory = shared_memory
        self._pools: dict[int, queue.Queue] = {}
        self._all_regions: list = []
        self.check_servers()

    # --- connections -------------------------------------------------------------------
    def _client(self, url: str):
        clients = getattr(self._local, "clients", None)
        if clients is None:
            clients = self._local.clients = {}
        if url not in clients:
            kwargs = {"verbose": False}
            if self.protocol == "http":
                kwargs.update(connection_timeout=self.timeout_s, network_timeout=self.timeout_s)
            clients[url] = self._module.InferenceServerClient(url, **kwargs)
        return clients[url]

    def check_servers(self) -> None:
        """Every server must be live and ready before a run starts."""
        for url in self.urls:
            try:
                ready = self._client(url).is_server_ready()
            except Exception as exc:
                raise BackendError(f"Triton server at {url} is unreachable ({exc})") from exc
            if not ready:
                raise BackendError(f"Triton server at {url} is up but not ready")

    def _with_retry(self, what: str, call):
        deadline = time.monotonic() + self.retry_seconds
        delay = 0.5
        while True:
            url = self._pick_url()
            try:
                return call(url)
            except Exception as exc:
                if isinstance(exc, BackendError) or not _is_retryable(exc):
                    raise
                if time.monotonic() + delay > deadline:
                    raise BackendError(f"{what}: server unavailable for {self.retry_seconds:.0f} s ({exc})") from exc
                log.warning("%s on %s failed (%s); retrying in %.1f s", what, url, str(exc).splitlines()[0], delay)
                time.sleep(delay)
                delay = min(delay * 2, 10.0)

    def _pick_url(self) -> str:
        with self._url_lock:
            return next(self._next_url)

    # --- models ------------------------------------------------------------------------
    def has_model(self, model: str) -> bool:
        try:
            self.model_info(model)
            return True
        except BackendError:
            return False

    def model_info(self, model: str) -> ModelInfo:
        if model not in self._info:
            infos = []
            for url in self.urls:
                client = self._client(url)
                try:
                    ready = client.is_model_ready(model)
                except Exception as exc:
                    raise BackendError(f"Triton server at {url}: {exc}") from exc
                if not ready:
                    raise BackendError(f"model {model} is not ready on the Triton server at {url}")
                config = client.get_model_config(model, **({"as_json": True} if self.protocol == "grpc" else {}))
                config = config.get("config", config)
                parameters = {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}
                infos.append(ModelInfo(metadata=parameters, max_batch_size=int(config.get("max_batch_size", 0))))
            if any(info != infos[0] for info in infos):
                raise BackendError(f"model {model} differs between servers {', '.join(self.urls)}")
            self._info[model] = infos[0]
        return self._info[model]

    # --- inference -----------------------------------------------------------------------
    def infer(self, model: str, inputs: dict[str, np.ndarray], outputs: list[str] | None = None) -> dict[str, np.ndarray]:
        info = self.model_info(model)
        size = len(next(iter(inputs.values())))
        step = info.max_batch_size or size
        chunks = [{k: v[i:i + step] for k, v in inputs.items()} for i in range(0, size, step)]
        futures = [self._pool.submit(self._infer_chunk, model, chunk, outputs, step) for chunk in chunks]
        results = [f.result() for f in futures]
        return {name: np.concatenate([r[name] for r in results]) for name in results[0]}

    def _infer_chunk(self, model: str, chunk: dict[str, np.ndarray], outputs: list[str] | None, step: int):
        region = self._acquire_region(chunk, step) if self.shared_memory else None
        try:
            return self._with_retry(f"inference on {model}", lambda url: self._send(url, model, chunk, outputs, region))
        finally:
            if region is not None:
                region["pool"].put(region)

    def _send(self, url, model, chunk, outputs, region):
        module = self._module
        from tritonclient.utils import np_to_triton_dtype

        requests = []
        offset = 0
        for name, array in chunk.items():
            array = np.ascontiguousarray(array)
            item = module.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
            if region is not None:
                self._shm.set_shared_memory_region(region["handle"], [array], offset=offset)
                self._register(url, region)
                item.set_shared_memory(region["name"], array.nbytes, offset=offset)
                offset += array.nbytes
            else:
                item.set_data_from_numpy(array)
            requests.append(item)
        wanted = [module.InferRequestedOutput(n) for n in outputs] if outputs else None
        try:
            kwargs = {"client_timeout": self.timeout_s} if self.protocol == "grpc" else {"timeout": int(self.timeout_s * 1e6)}
            result = self._client(url).infer(model, requests, outputs=wanted, **kwargs)
        except Exception as exc:
            if _is_retryable(exc):
                raise
            raise RequestError(f"{model} on {url} rejected the request: {str(exc).strip()}") from exc
        names = outputs or [o["name"] for o in self._output_names(url, model)]
        arrays = {n: result.as_numpy(n) for n in names}
        empty = [n for n, a in arrays.items() if a is None or a.size == 0]
        if empty:
            raise BackendError(f"{model} on {url} returned empty outputs {empty} (server numpy 2 in the stub?)")
        return arrays

    def _output_names(self, url, model):
        metadata = self._client(url).get_model_metadata(model, **({"as_json": True} if self.protocol == "grpc" else {}))
        return metadata["outputs"]

    # --- shared memory -------------------------------------------------------------------
    def _acquire_region(self, chunk: dict[str, np.ndarray], step: int) -> dict:
        """A shared-memory region big enough for a full chunk of this model (one pool per size)."""
        import tritonclient.utils.shared_memory as shm

        self._shm = shm
        per_item = sum(a.nbytes // max(len(a), 1) for a in chunk.values())
        size = per_item * step
        with self._url_lock:
            if size not in self._pools:
                self._pools[size] = queue.Queue()
                for _ in range(self.max_in_flight):
                    name = f"echodeploy_{uuid.uuid4().hex[:12]}"
                    handle = shm.create_shared_memory_region(name, "/" + name, size)
                    region = {"name": name, "key": "/" + name, "handle": handle, "size": size,
                              "registered": set(), "pool": self._pools[size]}
                    self._all_regions.append(region)
                    self._pools[size].put(region)
        return self._pools[size].get()

    def _register(self, url: str, region: dict) -> None:
        if url not in region["registered"]:
            self._client(url).register_system_shared_memory(region["name"], region["key"], region["size"])
            region["registered"].add(url)

    def _release_regions(self) -> None:
        for region in self._all_regions:
            for url in region["registered"]:
                try:
                    self._client(url).unregister_system_shared_memory(region["name"])
                except Exception:  # the server may be gone; the region is ours to free either way
                    pass
            self._shm.destroy_shared_memory_region(region["handle"])
        self._all_regions, self._pools = [], {}

    def server_statistics(self, model: str = "") -> list[dict]:
        """Triton's per-model statistics (queue, compute input/infer/output), from every server."""
        stats = []
        for url in self.urls:
            kwargs = {"as_json": True} if self.protocol == "grpc" else {}
            stats.append(self._client(url).get_inference_statistics(model_name=model, **kwargs))
        return stats

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        if self._all_regions:
            self._release_regions()
