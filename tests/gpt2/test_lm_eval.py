"""lm-evaluation-harness scores a loglikelihood task through `gpt2 serve` as it does
through Hugging Face: the acceptance test of the server's echo + logprobs.

A small random GPT-2 is written as an HF folder (config, safetensors, a byte-level
BPE tokenizer that transformers loads offline); `gpt2 serve` runs on it in a
subprocess (127.0.0.1, a free port). A multiple-choice task is written beside it
(a YAML task file, a JSONL dataset). lm_eval runs the task twice: with its
`local-completions` model against the server (the prompts' log-probabilities
from `echo` + `logprobs`, the tokenizer from the same folder) and with its own
`hf` model on the folder (torch, float32).

Oracle: lm_eval's `hf` model, an independent implementation (transformers'
GPT2LMHeadModel). Tolerance: each choice's log-likelihood within 1e-4 (a sum of
a few float32 log-probabilities of two implementations), its is_greedy flag
equal, and the same accuracy. Everything offline.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np

from gpt2.config import GPT2Config
from gpt2.random_weights import random_weights
from gpt2.tokenizer import EOS_TOKEN
from tests.tiny_models import train_tokenizer, write_hf_folder

# 2 layers, 4 heads of 16, a context of 128 (lm_eval's hf model reads its length here)
CONFIG = GPT2Config(n_layer=2, n_embd=64, n_head=4, n_positions=128, vocab_size=300)
TASK = "tinynn_choice"
# question, choices, the right one: the model is random, so "right" is only a label
DOCS = [
    ("The quick brown fox jumps over the", [" lazy dog", " quiet sea", " boats"], 0),
    ("Once upon a time there was a little", [" robot", " river", " number 42"], 0),
    ("Every morning it walked along the", [" harbour", " table", " letter"], 0),
    ("In the winter the river", [" froze", " laughed", " swam"], 0),
    ("The tokenizer must handle all of", [" them", " the boats", " Tuesday"], 0),
    ("She opened the letter and read it", [" twice", " never", " under the bridge"], 0),
    ("Loaders check every name and every", [" shape", " cat", " question mark"], 0),
    ("Attention lets every position read from the", [" positions before it", " sea", " war"], 0),
]
LL_TOLERANCE = 1e-4


def _hf_folder(root: Path) -> Path:
    """The model's HF folder, with what AutoTokenizer needs to load it offline."""
    folder = write_hf_folder(
        random_weights(CONFIG, 77), root / "model", train_tokenizer(CONFIG.vocab_size)
    )
    tokenizer_config = {
        "tokenizer_class": "GPT2Tokenizer",
        "bos_token": EOS_TOKEN,
        "eos_token": EOS_TOKEN,
        "unk_token": EOS_TOKEN,
        "add_prefix_space": False,
        "model_max_length": CONFIG.n_positions,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    return folder


def _greedy_doc(model: Path) -> tuple[str, list[str], int]:
    """A question whose first choice is the model's own greedy continuation (as
    lm_eval will tokenize it: question + choice), so that lm_eval's is_greedy is
    true somewhere; the other docs' choices are text the model never chose."""
    import gpt2

    with gpt2.load(model, device="cpu", n_threads=1) as m:
        for question, _, _ in DOCS:
            for n in (2, 3, 1):
                c = m.complete(question, max_new_tokens=n)
                ids = m.tokenizer.encode(question)
                if c.text and m.tokenizer.encode(question + c.text) == ids + c.token_ids:
                    return question, [c.text, " boats", " war"], 0
    raise AssertionError("no greedy continuation that tokenizes back to itself")


def _task_folder(root: Path, docs) -> Path:
    """A YAML task over a local JSONL dataset (lm_eval's `include_path`)."""
    folder = root / "tasks"
    folder.mkdir()
    data = folder / "docs.jsonl"
    data.write_text(
        "".join(json.dumps({"question": q, "choices": c, "answer": a}) + "\n" for q, c, a in docs)
    )
    (folder / f"{TASK}.yaml").write_text(
        f"task: {TASK}\n"
        "dataset_path: json\n"
        "dataset_kwargs:\n"
        "  data_files:\n"
        f"    test: {json.dumps(str(data))}\n"
        "test_split: test\n"
        "output_type: multiple_choice\n"
        'target_delimiter: ""\n'  # the choices hold their own space
        'doc_to_text: "{{question}}"\n'
        'doc_to_choice: "{{choices}}"\n'
        'doc_to_target: "{{answer}}"\n'
        "metric_list:\n"
        "  - metric: acc\n"
        "    aggregation: mean\n"
        "    higher_is_better: true\n"
    )
    return folder


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def _gpt2_serve(model: Path, env: dict[str, str]):
    """`gpt2 serve` on model in a subprocess; its base URL once /health answers."""
    port = _free_port()
    cmd = [sys.executable, "-m", "gpt2", "serve", "--model", str(model), "--device", "cpu"]
    cmd += ["--port", str(port), "--max-batch", "4", "--threads", "1"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"gpt2 serve exited {proc.returncode}: {proc.stdout.read()!r}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError("gpt2 serve did not answer /health within 60 s")
            time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        proc.stdout.close()


def _per_choice(results: dict) -> tuple[np.ndarray, np.ndarray, float]:
    """Each example's choices' (log-likelihood, is_greedy), in document order,
    and the accuracy."""
    samples = sorted(results["samples"][TASK], key=lambda s: s["doc_id"])
    ll = np.array([[float(r[0]) for r in s["filtered_resps"]] for s in samples])
    greedy = np.array([[bool(r[1]) for r in s["filtered_resps"]] for s in samples])
    return ll, greedy, results["results"][TASK]["acc,none"]


def test_lm_eval_scores_the_same_through_the_server_as_through_hf(tmp_path, monkeypatch):
    offline = {
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_HOME": str(tmp_path / "hf_home"),  # the dataset's cache, nobody else's
        "TOKENIZERS_PARALLELISM": "false",
    }
    for k, v in offline.items():
        monkeypatch.setenv(k, v)
    model = _hf_folder(tmp_path)
    docs = [*DOCS, _greedy_doc(model)]
    tasks_dir = _task_folder(tmp_path, docs)

    import lm_eval  # the client under test: in the test extra, never skipped
    from lm_eval.tasks import TaskManager

    def evaluate(model_type: str, model_args: dict) -> dict:
        return lm_eval.simple_evaluate(
            model=model_type,
            model_args=model_args,
            tasks=[TASK],
            task_manager=TaskManager(include_path=str(tasks_dir), include_defaults=False),
            batch_size=4,
            log_samples=True,
            bootstrap_iters=0,
        )

    env = {**os.environ, **offline}
    with _gpt2_serve(model, env) as url:
        served = evaluate(
            "local-completions",
            {
                "model": "tinynn-test",  # any name: the server has one model
                "base_url": url + "/v1/completions",
                "tokenizer": str(model),
                "tokenizer_backend": "huggingface",
                "tokenized_requests": True,
                "max_length": CONFIG.n_positions,
                "num_concurrent": 1,
                "max_retries": 1,
            },
        )
    reference = evaluate("hf", {"pretrained": str(model), "dtype": "float32", "device": "cpu"})

    ll, greedy, acc = _per_choice(served)
    ref_ll, ref_greedy, ref_acc = _per_choice(reference)
    assert ll.shape == (len(docs), 3) and np.isfinite(ll).all()
    worst = float(np.abs(ll - ref_ll).max())
    assert worst <= LL_TOLERANCE, (worst, ll, ref_ll)
    assert (greedy == ref_greedy).all(), (greedy, ref_greedy)
    assert greedy[-1, 0], "the model's own continuation is its greedy choice"
    assert acc == ref_acc
    # the choices are told apart by more than the tolerance: the accuracy is no tie
    gaps = np.sort(ref_ll, axis=1)
    assert (gaps[:, -1] - gaps[:, -2] > 10 * LL_TOLERANCE).all()
