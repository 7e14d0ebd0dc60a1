"""Scale-out on Ray Serve: one copy of `gpt2 serve` per GPU (or per few CPUs)
behind Ray's HTTP proxy, with the same OpenAI routes (gpt2.serve.app).

    from gpt2.serve.ray_deployment import build, run
    app = build("model.gguf", device="cuda", replicas=4)   # a bound Ray Serve application
    run(app, host="0.0.0.0", port=8000)                     # what `gpt2 serve --ray` does

Each replica loads the model itself and runs its own scheduler. A replica is
sent at most max_batch requests at once; the rest wait in Ray's proxy (429 with
Retry-After past max_queue). A model given as a path must exist at that path on
every node (a hub id is fetched per node).

Ray's own CLI takes the same application (string arguments):

    serve run gpt2.serve.ray_deployment:app_builder model=model.gguf device=cuda replicas=4

Needs the `ray` extra: pip install '.[ray]' (from the source folder).
"""

from __future__ import annotations

import math
import signal
import threading
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import gpt2
from gpt2.api import DEVICES, pick_device

APP_NAME = "gpt2"
RAY_EXTRA = "pip install '.[ray]' (from the source folder)"
# app_builder's arguments that are numbers (Ray passes every one as a string)
NUMBER_ARGS = {
    "replicas": int,
    "num_cpus": float,
    "n_ctx": int,
    "max_batch": int,
    "max_queue": int,
    "threads": int,
}


def import_ray() -> tuple[Any, Any]:
    """(ray, ray.serve), or an ImportError that says which extra to install."""
    try:
        import ray
        from ray import serve
    except ImportError as e:
        raise ImportError(f"Ray Serve is not installed: {RAY_EXTRA} ({e})") from None
    return ray, serve


@dataclass(frozen=True)
class ReplicaConfig:
    """What one replica loads and how it serves; the same for every replica."""

    model: str | None = None  # GGUF file, HF folder or hub id; None = the embedded model
    model_name: str = "gpt2"  # the id /v1/models shows
    device: str = "cpu"  # "cpu" or "cuda": a GPU replica sees only the GPU Ray gave it
    dtype: str = "auto"  # weight type; "auto" = the file's own
    n_ctx: int | None = None  # positions a sequence may use; None = the model's context
    max_batch: int = 8  # sequences decoded together at most
    max_queue: int = 64  # waiting requests before 429
    threads: int | None = None  # ggml CPU threads; None = the library's choice


class GPT2Replica:
    """One server: its own model and scheduler. Ray Serve constructs it, then
    asks __serve_build_asgi_app__ for the routes (the app needs the model, so it
    cannot be built before the replica exists)."""

    def __init__(self, config: ReplicaConfig):
        self.config = config
        self.model = gpt2.load(  # a slot a batch member (echo reads its own prefill)
            config.model,
            config.device,
            config.dtype,
            n_ctx=config.n_ctx,
            n_slots=config.max_batch,
            n_threads=config.threads,
        )

    def __serve_build_asgi_app__(self):
        # here, not at the top: fastapi comes with ray[serve], which import_ray() checks
        from gpt2.serve.app import create_app

        c = self.config
        return create_app(self.model, c.model_name, c.max_batch, c.max_queue)

    def __del__(self):
        # Ray calls this at shutdown, after the app's lifespan stopped the scheduler
        model = getattr(self, "model", None)  # absent when loading failed
        if model is not None:
            model.close()


def build(
    model: str | Path | None = None,
    *,
    replicas: int = 1,
    device: str = "cpu",
    num_cpus: float = 1,
    model_name: str | None = None,
    dtype: str = "auto",
    n_ctx: int | None = None,
    max_batch: int = 8,
    max_queue: int = 64,
    threads: int | None = None,
):
    """A Ray Serve application of `replicas` servers: on "cuda" one GPU each,
    on "cpu" `num_cpus` CPUs each (and as many ggml threads, unless `threads`
    says otherwise). "auto" is CUDA when this machine has a GPU. Deploy it
    with run() or serve.run()."""
    _, serve = import_ray()
    if device not in DEVICES:
        raise ValueError(f"device must be one of {DEVICES}, got {device!r}")
    if device == "auto":
        device = pick_device(device)
    if isinstance(replicas, bool) or not isinstance(replicas, int) or replicas < 1:
        raise ValueError(f"replicas must be an integer >= 1, got {replicas!r}")
    if not num_cpus > 0:
        raise ValueError(f"num_cpus must be > 0, got {num_cpus!r}")
    if device == "cpu" and threads is None:
        threads = max(1, math.floor(num_cpus))  # no more threads than the CPUs Ray reserved
    config = ReplicaConfig(
        model=None if model is None else str(model),
        model_name=model_name or (Path(str(model)).stem if model else "gpt2"),
        device=device,
        dtype=dtype,
        n_ctx=n_ctx,
        max_batch=max_batch,
        max_queue=max_queue,
        threads=threads,
    )
    actor_options: dict[str, float] = {"num_cpus": num_cpus}
    if device == "cuda":
        actor_options["num_gpus"] = 1  # Ray sets CUDA_VISIBLE_DEVICES: the replica's GPU is 0
    deployment = serve.deployment(
        serve.ingress()(GPT2Replica),
        name="GPT2Server",
        num_replicas=replicas,
        ray_actor_options=actor_options,
        # A replica is sent only what it decodes at once; the rest wait in Ray's
        # proxy, which hands each to the first replica with a free batch member,
        # and past max_queue answers 429 with Retry-After (as gpt2.serve.app does).
        max_ongoing_requests=max_batch,
        max_queued_requests=max_queue,
        backpressure_config={"status_code": 429, "retry_after_s": 1},
    )
    return deployment.bind(config)


def app_builder(args: dict[str, str]):
    """build() for Ray's `serve run module:app_builder key=value ...` and
    config files: the same keywords, given as strings."""
    known = {f.name for f in fields(ReplicaConfig)} | {"replicas", "num_cpus"}
    unknown = sorted(set(args) - known)
    if unknown:
        raise ValueError(f"unknown arguments {unknown}; known: {sorted(known)}")
    kw: dict[str, Any] = dict(args)
    for key, kind in NUMBER_ARGS.items():
        if key in kw:
            try:
                kw[key] = kind(kw[key])
            except ValueError:
                raise ValueError(f"{key}: expected a number, got {kw[key]!r}") from None
    return build(kw.pop("model", None), **kw)


def run(
    app,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    address: str | None = None,
) -> None:
    """Deploys `app` with Ray's HTTP proxy on host:port and blocks until Ctrl-C.
    address: an existing Ray cluster ("auto", "ray://head:10001"); None starts
    a local Ray instance on this machine. On exit the app is deleted (and a
    local instance shut down)."""
    ray, serve = import_ray()
    ray.init(address=address)
    if threading.current_thread() is threading.main_thread():
        # after ray.init, whose crash handler would abort on SIGTERM and leave the
        # local instance's agents running: unwind through the finally below instead
        signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        serve.start(http_options={"host": host, "port": port})
        serve.run(app, name=APP_NAME, route_prefix="/", blocking=True)
    finally:
        if address is None:
            serve.shutdown()
            ray.shutdown()
        else:  # someone else's cluster: take away only what we deployed
            serve.delete(APP_NAME)


def _exit_on_sigterm(signum: int, frame) -> None:
    raise SystemExit(128 + signum)
