"""Triton backend: batched gRPC (or HTTP) requests to one or more tritonservers.

A batch is split into chunks of at most the model's `max_batch_size`; chunks go out
concurrently (at most `max_in_flight` at a time, spread round-robin over the servers)
and are reassembled in order. Failures that are the server's state, not the request's
(down, restarting, model loading, queue full, timed out) are retried with exponential
backoff until `retry_seconds` is spent, then raise `BackendError` (the run stops; its rows
stay unfinished and a rerun computes them). A request the server rejects (shape, dtype)
raises `RequestError` with the server's reason. With the server on this host, inputs
travel through system shared memory instead of the socket.
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

from echodeploy.backends.base import ModelInfo
from echodeploy.errors import BackendError, RequestError

log = logging.getLogger(__name__)

# Lower-case markers of failures caused by the server's state rather than the request.
TRANSIENT = ("unavailable", "resource_exhausted", "deadline_exceeded", "socket closed", "failed to connect",
             "connection refused", "broken pipe", "connection reset", "exceeds maximum queue size",
             "server is not ready", "unknown model", "unable to find shared memory region")
LOCAL_HOSTS = ("127.0.0.1", "localhost", "[::1]")
PROTOCOLS = ("grpc", "http")
MAX_BACKOFF_S = 10.0


def _is_transient(exc: Exception) -> bool:
    text = f"{getattr(exc, 'status', lambda: '')()} {exc}".lower()
    return any(marker in text for marker in TRANSIENT)


def _first_line(exc: Exception) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


class TritonBackend:
    name = "triton"

    def __init__(self, urls: list[str], protocol: str = "grpc", max_in_flight: int = 4,
                 timeout_s: float = 120.0, retry_seconds: float = 60.0, shared_memory: bool | None = None):
        if protocol not in PROTOCOLS:
            raise BackendError(f"protocol must be {' or '.join(PROTOCOLS)}, got {protocol!r}")
        if protocol == "grpc":
            import tritonclient.grpc as module
        else:
            import tritonclient.http as module
        self._module, self.protocol = module, protocol
        self._as_json = {"as_json": True} if protocol == "grpc" else {}  # gRPC answers protobufs otherwise
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
        self._outages: dict[str, float] = {}  # url -> when its current outage began
        self._closing = threading.Event()
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
        """Every server must be live before a run starts (each model's readiness is checked on first use:
        a server is not ready while any of its models is not, even one this run does not need)."""
        for url in self.urls:
            try:
                live = self._client(url).is_server_live()
            except Exception as exc:
                raise BackendError(f"Triton server at {url} is unreachable ({exc})") from exc
            if not live:
                raise BackendError(f"Triton server at {url} is up but not live")

    def _drop_client(self, url: str) -> None:
        """Forget this thread's connection to `url`: gRPC's own reconnect backoff would outlast ours."""
        client = getattr(self._local, "clients", {}).pop(url, None)
        if client is not None:
            client.close()

    def _with_retry(self, call):
        deadline = time.monotonic() + self.retry_seconds
        delay = 0.5
        while True:
            url = self._pick_url()
            try:
                result = call(url)
            except Exception as exc:
                if isinstance(exc, BackendError) or not _is_transient(exc):
                    raise
                self._drop_client(url)
                if time.monotonic() + delay > deadline or self._closing.is_set():
                    raise BackendError(
                        f"Triton server at {url} still failing after {self.retry_seconds:g} s of retries "
                        f"(--retry-seconds): {_first_line(exc)}; finished rows are kept, rerun to resume") from exc
                self._note_outage(url, exc)
                self._closing.wait(delay)
                delay = min(delay * 2, MAX_BACKOFF_S)
            else:
                self._note_recovery(url)
                return result

    def _note_outage(self, url: str, exc: Exception) -> None:
        """One warning per outage of a server, however many requests hit it."""
        with self._url_lock:
            first = url not in self._outages
            self._outages.setdefault(url, time.monotonic())
        if first:
            log.warning("Triton server at %s failing: %s; retrying with backoff for up to %g s",
                        url, _first_line(exc), self.retry_seconds)

    def _note_recovery(self, url: str) -> None:
        with self._url_lock:
            began = self._outages.pop(url, None)
        if began is not None:
            log.warning("Triton server at %s answers again after %.1f s", url, time.monotonic() - began)

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
                    raise BackendError(f"model {model} {self._model_state(client, model)} on the Triton server at {url}")
                config = client.get_model_config(model, **self._as_json)
                config = config.get("config", config)
                parameters = {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}
                infos.append(ModelInfo(metadata=parameters, max_batch_size=int(config.get("max_batch_size", 0))))
            if any(info != infos[0] for info in infos):
                raise BackendError(f"model {model} differs between servers {', '.join(self.urls)}")
            self._info[model] = infos[0]
        return self._info[model]

    def _model_state(self, client, model: str) -> str:
        """Why a model is not ready, from the server's repository index."""
        index = client.get_model_repository_index(**self._as_json)
        for entry in index.get("models", []) if isinstance(index, dict) else index:
            if entry.get("name") == model:
                return f"is not ready ({entry.get('state', 'no state')}: {entry.get('reason') or 'no reason given'})"
        return "is not in the model repository"

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
            return self._with_retry(lambda url: self._send(url, model, chunk, outputs, region))
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
                item.set_shared_memory(region["name"], array.nbytes, offset=offset)
                offset += array.nbytes
            else:
                item.set_data_from_numpy(array)
            requests.append(item)
        wanted = [module.InferRequestedOutput(n) for n in outputs] if outputs else None
        try:
            if region is not None:
                self._register(url, region)
            kwargs = {"client_timeout": self.timeout_s} if self.protocol == "grpc" else {"timeout": int(self.timeout_s * 1e6)}
            result = self._client(url).infer(model, requests, outputs=wanted, **kwargs)
        except Exception as exc:
            if region is not None:
                self._forget_registrations(url)
            if _is_transient(exc):
                raise
            raise RequestError(f"{model} on {url} rejected the request: {str(exc).strip()}") from exc
        names = outputs or [o["name"] for o in self._output_names(url, model)]
        arrays = {n: result.as_numpy(n) for n in names}
        empty = [n for n, a in arrays.items() if a is None or a.size == 0]
        if empty:
            raise BackendError(f"{model} on {url} returned empty outputs {empty} (server numpy 2 in the stub?)")
        return arrays

    def _output_names(self, url, model):
        metadata = self._client(url).get_model_metadata(model, **self._as_json)
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
        """Register the region on `url` once; after a failure, replace whatever the server holds."""
        if url not in region["registered"]:
            client = self._client(url)
            client.unregister_system_shared_memory(region["name"])  # a no-op when the server has none
            client.register_system_shared_memory(region["name"], region["key"], region["size"])
            region["registered"].add(url)

    def _forget_registrations(self, url: str) -> None:
        """After a failure `url` may be a restarted server that has forgotten our regions: register again."""
        with self._url_lock:
            for region in self._all_regions:
                region["registered"].discard(url)

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
            stats.append(self._client(url).get_inference_statistics(model_name=model, **self._as_json))
        return stats

    def close(self) -> None:
        self._closing.set()  # requests waiting to retry give up now
        self._pool.shutdown(wait=True)
        if self._all_regions:
            self._release_regions()
