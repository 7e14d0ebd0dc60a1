"""Scale-out on Ray Serve (gpt2.serve.ray_deployment): a local Ray instance, two
CPU replicas of the embedded model behind Ray's HTTP proxy on 127.0.0.1, and
requests through the proxy with the official `openai` client and httpx.

Every answer is compared exactly (text equality) with the library's own
complete()/generate() of the same prompt and parameters, loaded in this process.

Bounded for a 2-core CI machine: Ray gets 3 logical CPUs (one a replica), every
wait has a timeout, and the module takes about 25 s. ray is imported plainly: the
test extra installs it, so a missing ray fails here instead of skipping.
"""

from __future__ import annotations

import os
import socket
import sys
import threading
from pathlib import Path

import httpx
import openai
import pytest
import ray
from ray import serve

import gpt2
from gpt2.cli import main
from gpt2.serve import ray_deployment

DEPLOY_TIMEOUT_S = 150  # Ray's start, the proxy and two replicas loading the model
REQUEST_TIMEOUT_S = 60
MODEL_NAME = "gpt2"  # the embedded model's id: no file, no stem
PROMPTS = ["The Python", "Once upon a time", "import os", "def main", "for x in", "class A"]


def _free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def _deploy(app, name: str = ray_deployment.APP_NAME, route_prefix: str = "/") -> None:
    """serve.run() has no timeout of its own (a replica that cannot start is
    retried): run it in a thread and give up after DEPLOY_TIMEOUT_S."""
    failure: list[BaseException] = []

    def deploy() -> None:
        try:
            serve.run(app, name=name, route_prefix=route_prefix)
        except BaseException as e:  # noqa: BLE001 - reported by the test thread
            failure.append(e)

    thread = threading.Thread(target=deploy, daemon=True)
    thread.start()
    thread.join(DEPLOY_TIMEOUT_S)
    if thread.is_alive():
        raise TimeoutError(f"the Ray Serve app did not start within {DEPLOY_TIMEOUT_S} s")
    if failure:
        raise failure[0]


@pytest.fixture(scope="module")
def oracle():
    with gpt2.load(None, device="cpu", n_threads=1) as model:
        yield model


@pytest.fixture(scope="module")
def proxy():
    """The proxy's URL; Serve and Ray are shut down after the module."""
    checkout = str(Path(gpt2.__file__).resolve().parents[1])
    with pytest.MonkeyPatch.context() as env:
        env.setenv("RAY_USAGE_STATS_ENABLED", "0")  # no reports over the network
        # Ray's processes take the environment at init: the replicas import the same gpt2
        env.setenv("PYTHONPATH", os.pathsep.join(filter(None, [checkout, os.getenv("PYTHONPATH")])))
        ray.init(
            address="local",  # a new instance, whatever RAY_ADDRESS says
            num_cpus=3,  # the two replicas, and one more for the backpressure test's
            include_dashboard=False,
            object_store_memory=128 * 2**20,
            log_to_driver=False,
        )
    try:
        port = _free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        _deploy(ray_deployment.build(replicas=2, device="cpu", num_cpus=1, max_batch=4))
        yield f"http://127.0.0.1:{port}"
    finally:
        serve.shutdown()
        ray.shutdown()


@pytest.fixture
def client(proxy):
    return openai.OpenAI(
        base_url=proxy + "/v1", api_key="unused", max_retries=0, timeout=REQUEST_TIMEOUT_S
    )


def test_two_replicas_run_behind_the_proxy(proxy, client):
    app = serve.status().applications[ray_deployment.APP_NAME]
    (deployment,) = app.deployments.values()
    assert deployment.status == "HEALTHY", deployment
    assert dict(deployment.replica_states) == {"RUNNING": 2}, deployment.replica_states
    assert [m.id for m in client.models.list()] == [MODEL_NAME]
    assert httpx.get(proxy + "/health", timeout=REQUEST_TIMEOUT_S).json() == {"status": "ok"}
    metrics = httpx.get(proxy + "/metrics", timeout=REQUEST_TIMEOUT_S).text
    assert "gpt2_requests_total" in metrics and "gpt2_batch_capacity 4" in metrics


def test_greedy_equals_the_library(oracle, client):
    for prompt in PROMPTS[:3]:
        r = client.completions.create(model=MODEL_NAME, prompt=prompt, max_tokens=16)
        want = oracle.complete(prompt, max_new_tokens=16)
        assert r.choices[0].text == want.text, prompt
        assert r.choices[0].finish_reason == "length"
        assert r.usage.prompt_tokens == want.usage.prompt_tokens
        assert r.usage.completion_tokens == want.usage.completion_tokens


def test_stream_equals_non_stream(oracle, client):
    kw = {"model": MODEL_NAME, "prompt": "Once upon a time", "max_tokens": 20}
    sampled = {"temperature": 0.9, "top_p": 0.95, "seed": 3}
    whole = client.completions.create(**kw, **sampled)
    chunks = list(client.completions.create(**kw, **sampled, stream=True))
    assert "".join(c.choices[0].text for c in chunks) == whole.choices[0].text
    assert chunks[-1].choices[0].finish_reason == whole.choices[0].finish_reason
    assert whole.choices[0].text == oracle.generate("Once upon a time", 20, **sampled)


def test_concurrent_requests_each_get_their_answer(oracle, proxy):
    jobs = [
        (PROMPTS[i % len(PROMPTS)], {} if i % 2 else {"temperature": 0.8, "seed": i})
        for i in range(8)
    ]
    want = [oracle.generate(p, 8 + i, **kw) for i, (p, kw) in enumerate(jobs)]
    got: list[str | None] = [None] * len(jobs)

    def ask(i: int) -> None:
        c = openai.OpenAI(
            base_url=proxy + "/v1", api_key="unused", max_retries=0, timeout=REQUEST_TIMEOUT_S
        )
        prompt, kw = jobs[i]
        if i % 3 == 0:
            stream = c.completions.create(
                model=MODEL_NAME, prompt=prompt, max_tokens=8 + i, stream=True, **kw
            )
            got[i] = "".join(chunk.choices[0].text for chunk in stream)
        else:
            r = c.completions.create(model=MODEL_NAME, prompt=prompt, max_tokens=8 + i, **kw)
            got[i] = r.choices[0].text

    threads = [threading.Thread(target=ask, args=(i,), daemon=True) for i in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(REQUEST_TIMEOUT_S)
    assert got == want


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        ('{"prompt": "x"', 400, None),  # malformed JSON
        ('{"prompt": "x", "max_tokens": "five"}', 400, "max_tokens"),
        ('{"prompt": "x", "max_tokens": 100000}', 400, "max_tokens"),
        ('{"prompt": "x", "logit_bias": {"5": 101}}', 400, "logit_bias"),
    ],
)
def test_bad_requests_get_openai_errors_through_the_proxy(proxy, client, body, status, param):
    r = httpx.post(
        proxy + "/v1/completions",
        content=body,
        headers={"content-type": "application/json"},
        timeout=REQUEST_TIMEOUT_S,
    )
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["message"] and err["type"] == "invalid_request_error" and err["param"] == param
    assert client.completions.create(model=MODEL_NAME, prompt="the", max_tokens=2).choices


def test_any_model_name_is_the_deployments_model(client):
    """One model a deployment: another name is answered by it, never 404."""
    r = client.completions.create(model="gpt-4", prompt="the", max_tokens=2)
    assert r.model == MODEL_NAME and r.choices[0].text


def test_past_max_queue_ray_answers_429_with_retry_after(proxy):
    """One replica decoding one request at a time, one request waiting in the
    proxy: of six sent at once (each ~200 decode steps) the later ones get 429."""
    name = "tight"
    app = ray_deployment.build(replicas=1, device="cpu", max_batch=1, max_queue=1)
    _deploy(app, name=name, route_prefix="/" + name)
    try:
        body = {"prompt": "The Python", "max_tokens": 200}
        results: list[httpx.Response] = []

        def post() -> None:
            url = f"{proxy}/{name}/v1/completions"
            results.append(httpx.post(url, json=body, timeout=REQUEST_TIMEOUT_S))

        threads = [threading.Thread(target=post, daemon=True) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(REQUEST_TIMEOUT_S)
        codes = sorted(r.status_code for r in results)
        assert len(codes) == 6 and 200 in codes and 429 in codes, codes
        busy = next(r for r in results if r.status_code == 429)
        assert busy.headers["retry-after"] == "1"
        done = next(r for r in results if r.status_code == 200)
        assert done.json()["usage"]["completion_tokens"] == 200
    finally:
        serve.delete(name)


# --- the builder and the CLI, without a Ray instance ----------------------------------


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"replicas": 0}, "replicas"),
        ({"replicas": 1.5}, "replicas"),
        ({"num_cpus": 0}, "num_cpus"),
        ({"device": "tpu"}, "device"),
    ],
)
def test_build_rejects_bad_options(kw, message):
    with pytest.raises(ValueError, match=message):
        ray_deployment.build(**kw)


def test_app_builder_takes_strings_and_rejects_unknown_ones():
    app = ray_deployment.app_builder({"replicas": "2", "num_cpus": "0.5", "device": "cpu"})
    assert isinstance(app, serve.Application)
    with pytest.raises(ValueError, match="unknown arguments \\['replica'\\]"):
        ray_deployment.app_builder({"replica": "2"})
    with pytest.raises(ValueError, match="max_batch: expected a number"):
        ray_deployment.app_builder({"max_batch": "eight"})


def test_without_ray_the_error_names_the_extra(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    with pytest.raises(ImportError, match=r"pip install '\.\[ray\]'"):
        ray_deployment.import_ray()
    assert main(["serve", "--ray", "--device", "cpu"]) == 2
    assert "pip install '.[ray]' (from the source folder)" in capsys.readouterr().err


def test_cli_builds_the_ray_app_and_runs_it(monkeypatch):
    built, ran = {}, {}
    monkeypatch.setattr(ray_deployment, "build", lambda model, **kw: built.update(kw) or "app")
    monkeypatch.setattr(ray_deployment, "run", lambda app, **kw: ran.update(kw, app=app))
    argv = ["serve", "--ray", "--replicas", "3", "--device", "cuda", "--port", "9000"]
    assert main([*argv, "--ray-address", "auto", "--max-batch", "4"]) == 0
    assert built["replicas"] == 3 and built["device"] == "cuda" and built["max_batch"] == 4
    assert built["num_cpus"] == 1 and built["model_name"] == gpt2.api.model_id(None)
    assert ran == {"app": "app", "host": "127.0.0.1", "port": 9000, "address": "auto"}


def test_cli_ray_options_need_ray(capsys):
    assert main(["serve", "--replicas", "2"]) == 2
    assert "--replicas: only with --ray" in capsys.readouterr().err
