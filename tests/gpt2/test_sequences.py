"""A model and its sequences: state of one generation never leaks into another.

Every engine (fast, and the two Ruby ports) gives each generation, stream,
logits() call and batch its own cache slot and position, so interleaving them
or running them from several threads gives exactly what each gives alone;
closing a model while another thread generates is a clean error, never a crash.
"""

from __future__ import annotations

import random
import threading

import numpy as np
import pytest

import gpt2
from gpt2.api import make_engine
from gpt2.engine.base import Engine
from gpt2.engine.step import StepPlan, StepRow
from gpt2.generate import greedy_generate, greedy_generate_batch
from gpt2.sampling import SamplingParams
from gpt2.sequence import SequenceBatch, SingleSequence
from gpt2.slots import NoFreeSlotError

ENGINE_NAMES = ("fast", "full", "kv")
SAMPLED = {"temperature": 0.9, "top_k": 20, "seed": 3}


@pytest.fixture(params=ENGINE_NAMES)
def model(request, tiny_model):
    with gpt2.load(tiny_model.gguf_llama, device="cpu", engine=request.param, n_threads=1) as m:
        yield m


def _prompts(config, n: int, length: int = 5) -> list[list[int]]:
    rng = np.random.default_rng(11)
    return [rng.integers(0, config.vocab_size, length + i).tolist() for i in range(n)]


def test_every_engine_speaks_the_one_interface(model):
    engine = model.engine
    assert isinstance(engine, Engine)
    with engine.sequence() as seq:
        assert isinstance(seq, SingleSequence)
        assert seq.position == 0
        seq.start_greedy([1, 2, 3])
        assert seq.position == 3
        assert engine.context.positions[seq.slot] == 3  # the one table
    with engine.batch(2) as batch:
        assert isinstance(batch, SequenceBatch)


def test_one_step_mixes_prefill_and_decode_rows(model):
    """A plan's prefill and decode rows run in one step, and each row gets what
    it gets alone: the greedy id, the last logits, or every position's."""
    engine = model.engine
    a, b = [5, 6, 7, 8], [9, 10, 11]
    want_a = engine.logits(a + [3])
    want_b = engine.logits(b)
    with engine.batch(2) as batch:
        first = batch.first
        batch.start_member(0, a, greedy=True)
        plan = StepPlan(
            [
                StepRow(first, [3], 4, sampling=None, logits="last"),
                StepRow(first + 1, b, 0, logits="all"),
            ]
        )
        out = engine.step(plan)
        np.testing.assert_allclose(out.logits[0], want_a[-1], atol=1e-5)
        np.testing.assert_allclose(out.logits[1], want_b, atol=1e-5)
        assert out.tokens[0] == -1  # it asked for no choice
        assert out.tokens[1] == int(np.argmax(want_b[-1]))
        assert batch.positions == [5, 3]


@pytest.mark.parametrize(
    "row, message",
    [
        (StepRow(0, [1], 3), "position"),  # past the slot's next position
        (StepRow(0, [], 0), "non-empty"),
        (StepRow(0, [10**6], 0), "vocabulary"),
        (StepRow(99, [1], 0), "slot"),
        (StepRow(0, [1], 0, uniform=1.0), "uniform"),
        (StepRow(0, [1], 0, sampling=None, logprobs=2), "chosen token"),
        (StepRow(0, [1], 0, logits="every"), "logits"),
    ],
)
def test_a_bad_row_is_refused_before_the_device_runs(model, row, message):
    engine = model.engine
    with engine.sequence():
        with pytest.raises(ValueError, match=message):
            engine.step(StepPlan([row]))
        assert int(engine.context.positions[0]) == 0


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"position": 3}, "row 2: position"),  # past the slot's next position
        ({"position": np.int64(2)}, "row 2: position"),  # not an int
        ({"uniform": float("nan")}, "row 2: uniform"),
        ({"uniform": 1.0}, "row 2: uniform"),
        ({"uniform": -0.25}, "row 2: uniform"),
        ({"logprobs": -1}, "row 2: logprobs"),
        ({"logprobs": True}, "row 2: logprobs"),  # equal to the others' 1, not an int
        ({"logprobs": 2, "sampling": None}, "row 2: log-probabilities"),
        ({"logits": "every"}, "row 2: logits"),
        ({"logits": ["last"]}, "row 2: logits"),
        ({"sampling": "greedy"}, "row 2: sampling"),
        ({"tokens": "many"}, "row 2: .*pass the context"),
        ({"slot": 99}, "row 2: slot"),
        ({"slot": "0"}, "row 2: slot"),
        ({"slot": "the second row's"}, "more than one row"),
    ],
)
def test_a_bad_row_among_good_ones_is_named(model, bad, message):
    """The checks run over a plan's columns at once; a plan that fails one is
    checked a row at a time, and the error names the bad row (here the third of
    three decode rows) before the device runs."""
    engine = model.engine
    sampled = SamplingParams(0.9, 5, 1.0)
    with engine.batch(3) as batch:
        first = batch.first
        batch.start([[1, 2], [3, 4], [5, 6]])
        good = [
            StepRow(first + i, [7 + i], 2, sampled, 0.5, logprobs=1, logits="last")
            for i in range(2)
        ]
        kw = {"slot": first + 2, "tokens": [9], "position": 2, "sampling": sampled, "uniform": 0.5}
        kw.update(bad)
        if kw["slot"] == "the second row's":
            kw["slot"] = first + 1
        if kw["tokens"] == "many":
            kw["tokens"] = [1] * (engine.max_positions - 1)
        with pytest.raises(ValueError, match=message):
            engine.step(StepPlan([*good, StepRow(**kw)]))
        assert batch.positions == [2, 2, 2]
        out = engine.step(StepPlan(good))  # the good rows alone run, and move on
        assert batch.positions == [3, 3, 2]
        assert all(out.tokens >= 0) and [len(t) for t in out.top_ids] == [1, 1]


def test_interleaved_streams_equal_each_alone(model):
    kw = {"max_new_tokens": 12, **SAMPLED}
    alone_a = list(model.stream("the cat", **kw))
    alone_b = list(model.stream("a dog and", **kw))
    streams = [model.stream("the cat", **kw), model.stream("a dog and", **kw)]
    got: list[list[str]] = [[], []]
    live = [0, 1]
    while live:  # consumed alternately, a piece at a time
        for i in list(live):
            piece = next(streams[i], None)
            if piece is None:
                live.remove(i)
            else:
                got[i].append(piece)
    assert "".join(got[0]) == "".join(alone_a)
    assert "".join(got[1]) == "".join(alone_b)


def test_logits_and_generate_in_the_middle_of_a_stream(model):
    ids = _prompts(model.config, 1, 9)[0]
    want_logits = model.logits(ids)
    want_ids = model.generate(ids, max_new_tokens=6)
    alone = "".join(model.stream("the cat", max_new_tokens=10, temperature=0))
    stream = model.stream("the cat", max_new_tokens=10, temperature=0)
    got = [next(stream), next(stream)]
    np.testing.assert_array_equal(model.logits(ids), want_logits)
    assert model.generate(ids, max_new_tokens=6) == want_ids
    got += list(stream)
    assert "".join(got) == alone


def test_threads_sharing_a_model_each_get_their_single_threaded_result(model):
    prompts = _prompts(model.config, 4)
    want = [model.generate(p, max_new_tokens=10, **SAMPLED) for p in prompts]
    for n_round in range(3):
        got: list = [None] * 4
        errors: list[BaseException] = []

        def run(i: int, got=got, errors=errors) -> None:
            try:
                got[i] = model.generate(prompts[i], max_new_tokens=10, **SAMPLED)
            except BaseException as e:  # noqa: BLE001 - reported below
                errors.append(e)

        threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not errors, errors
        assert got == want, f"round {n_round}"


def test_more_threads_than_slots_wait_for_one(tiny_model):
    with gpt2.load(tiny_model.gguf_llama, device="cpu", n_slots=2, n_threads=1) as model:
        prompts = _prompts(model.config, 6)
        want = [model.generate(p, max_new_tokens=8) for p in prompts]
        got: list = [None] * 6
        threads = [
            threading.Thread(
                target=lambda i=i: got.__setitem__(i, model.generate(prompts[i], max_new_tokens=8))
            )
            for i in range(6)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert got == want


def test_a_thread_holding_every_slot_gets_an_error_not_a_hang(tiny_model):
    with gpt2.load(tiny_model.gguf_llama, device="cpu", n_slots=1, n_threads=1) as model:
        first = model.stream("the cat", max_new_tokens=5)
        next(first)  # holds the only slot
        second = model.stream("a dog", max_new_tokens=5)
        with pytest.raises(NoFreeSlotError, match="n_slots"):
            next(second)
        first.close()  # gives the slot back
        assert "".join(model.stream("a dog", max_new_tokens=5))


def test_waiting_for_a_slot_times_out(tiny_model):
    with gpt2.load(tiny_model.gguf_llama, device="cpu", n_slots=1, n_threads=1) as model:
        held, go_on = threading.Event(), threading.Event()

        def hold() -> None:
            with model.engine.sequence():
                held.set()
                go_on.wait(30)

        t = threading.Thread(target=hold)
        t.start()
        held.wait(30)
        try:
            with pytest.raises(NoFreeSlotError, match="within 0.2 s"):
                model.engine.sequence(timeout=0.2)
        finally:
            go_on.set()
            t.join(30)
        with model.engine.sequence(timeout=5):
            pass


@pytest.mark.parametrize("engine_name", ENGINE_NAMES)
def test_close_during_generate(tiny_model, engine_name):
    """close() from another thread while a generation runs: the generation
    finishes or raises ValueError; never a crash, never garbage ids."""
    n_runs = 50 if engine_name == "fast" else 10
    vocab = tiny_model.config.vocab_size
    rng = random.Random(5)
    outcomes = {"finished": 0, "closed": 0}
    for _ in range(n_runs):
        engine = make_engine(tiny_model.weights, engine_name, "cpu", n_threads=1)
        result: dict = {}

        def run(engine=engine, result=result) -> None:
            try:
                result["ids"] = greedy_generate(engine, [1, 2, 3], 60)
            except ValueError as e:
                result["error"] = e
            except BaseException as e:  # noqa: BLE001 - anything else fails below
                result["unexpected"] = e

        t = threading.Thread(target=run)
        t.start()
        threading.Event().wait(rng.uniform(0, 0.02))
        engine.close()
        t.join(60)
        assert not t.is_alive()
        assert "unexpected" not in result, result
        if "ids" in result:
            assert all(0 <= i < vocab for i in result["ids"])
            outcomes["finished"] += 1
        else:
            assert "closed" in str(result["error"])
            outcomes["closed"] += 1
        with pytest.raises(ValueError, match="closed"):
            engine.logits([1])
    assert outcomes["closed"] > 0, outcomes  # the race was really run


def test_batch_prompts_at_the_context_end_are_not_cut(model):
    n = model.config.n_positions
    prompts = [[1] * (n - 2), [2] * 3, [3] * 5]
    got = model.generate_batch(prompts, max_new_tokens=20)
    assert got == [model.generate(p, max_new_tokens=20) for p in prompts]
    assert [len(g) for g in got] == [3, 20, 20]


def test_batch_of_a_port_engine_equals_single(tiny_model):
    """Batches work on every engine (the ports run their sequences one by one)."""
    engine = make_engine(tiny_model.weights, "kv", "cpu", n_threads=1)
    with engine:
        prompts = _prompts(tiny_model.config, 3)
        singles = [greedy_generate(engine, p, 6) for p in prompts]
        assert greedy_generate_batch(engine, prompts, 6) == singles


def test_closed_sequence_and_model_raise(tiny_model):
    engine = make_engine(tiny_model.weights, "fast", "cpu", n_threads=1)
    seq = engine.sequence()
    seq.start_greedy([1, 2])
    seq.close()
    with pytest.raises(ValueError, match="sequence is closed"):
        seq.step_greedy(1)
    live = engine.sequence()
    live.start_greedy([1, 2])
    engine.close()
    with pytest.raises(ValueError, match="model is closed"):
        live.step_greedy(1)
    with pytest.raises(ValueError, match="model is closed"):
        engine.sequence()
    engine.close()  # twice is fine
