"""OpenVINO's two hints side by side: one latency stream on all cores, or the throughput hint's
streams with each batch split over them (what bulk runs use), alternated in one process.

    python -m echodeploy.benchmarks.openvino_streams --repository model_repository \\
        --models cmr_a4c_scar,mmode_lvid --batch 10 --rounds 4

Prints items/s per round and hint, and the ratio of the best rounds.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from echodeploy.backends.embedded import probe_inputs
from echodeploy.specs import model_spec
from echodeploy.wiring import BackendSettings, open_backend
from echodeploy.wiring.settings import HINTS


def compare_hints(repository: Path, model: str, batch: int, rounds: int) -> dict[str, list[float]]:
    """Items/s of each hint per round, on the same generated batch; rounds alternate the hints."""
    spec = model_spec(model)
    backends = {hint: open_backend(BackendSettings(name="openvino", repository=repository, openvino_hint=hint))
                for hint in HINTS}
    feeds, rates = probe_inputs(spec, batch), {hint: [] for hint in HINTS}
    for backend in backends.values():
        backend.infer(model, feeds)  # compile, allocate, tune
    for _ in range(rounds):
        for hint, backend in backends.items():
            start = time.perf_counter()
            backend.infer(model, feeds)
            rates[hint].append(batch / (time.perf_counter() - start))
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repository", type=Path, default=Path("model_repository"))
    parser.add_argument("--models", default="cmr_a4c_scar,mmode_lvid")
    parser.add_argument("--batch", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args()
    for model in args.models.split(","):
        rates = compare_hints(args.repository, model, args.batch, args.rounds)
        rounds = "  ".join(f"{hint} " + " ".join(f"{rate:.2f}" for rate in rates[hint]) for hint in HINTS)
        ratio = max(rates["throughput"]) / max(rates["latency"])
        print(f"{model} batch {args.batch}: items/s {rounds}; throughput/latency {ratio:.2f}x")


if __name__ == "__main__":
    main()
