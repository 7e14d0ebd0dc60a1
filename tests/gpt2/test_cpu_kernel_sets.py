"""The fast engine on the CPU gives the same bits on every kernel set of our product.

Its f32 and f16 weights are packed for our own product (native/cpu_product.c), whose
AVX-512, AVX2 and scalar kernels sum each element in one order; nothing else in a graph
depends on the kernel set. So prefill and decode logits must be equal bit for bit under
every set this CPU runs (TINYNN_CPU_KERNELS), which also carries the batch-invariance
tests (run under the best set) to a CPU without AVX-512. Tolerance: none.
"""

from __future__ import annotations

import numpy as np
import pytest

import tinynn
from gpt2.config import GPT2Config
from gpt2.engine import FastGPT2
from gpt2.random_weights import random_weights

CONFIG = GPT2Config(n_layer=2, n_embd=128, n_head=2, n_positions=128, vocab_size=509)
PROMPTS = ([5, 17, 300, 2, 9], [44, 1, 508])


def logits_under(kernels: str, weights, dtype: str, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("TINYNN_CPU_KERNELS", kernels)
    with FastGPT2(weights, "cpu", dtype, n_slots=2, n_threads=2) as e:
        assert e.weights.wte.packed and e.weights.layers[0].w_fc.packed
        with e.batch(len(PROMPTS)) as b:
            out = [b.start([list(p) for p in PROMPTS])]
            for step in range(3):
                out.append(b.step([7 + step, 100 + step]))
    return np.stack(out)


@pytest.mark.parametrize("dtype", ["f32", "f16"])
def test_every_kernel_set_gives_the_same_logits(dtype: str, monkeypatch) -> None:
    weights = random_weights(CONFIG, seed=3)
    sets = tinynn.cpu_kernels_supported()
    results = {k: logits_under(k, weights, dtype, monkeypatch) for k in sets}
    first = sets[0]
    for k, got in results.items():
        diff = np.abs(got - results[first])
        assert np.array_equal(got, results[first]), (
            f"{k} vs {first}: largest difference {diff.max():.3g} at "
            f"{np.unravel_index(np.argmax(diff), diff.shape)}"
        )


def test_packed_weights_download_as_the_file_holds_them() -> None:
    weights = random_weights(CONFIG, seed=3)
    with FastGPT2(weights, "cpu", "f16", n_slots=1) as e:
        w_fc = e.weights.layers[1].w_fc
        assert w_fc.packed
        want = np.asarray(weights["h.1.mlp.c_fc.weight"], np.float32).T.astype(np.float16)
        np.testing.assert_array_equal(w_fc.download(), want)
