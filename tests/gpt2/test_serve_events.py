"""How the server hands a step's tokens to its clients: the scheduler thread's
events reach the event loop with one wake-up for all that arrive together, in
order, and a streamed chunk is written from its parts exactly as the JSON of
the whole chunk would be."""

from __future__ import annotations

import asyncio
import json
import threading

import pytest

pytest.importorskip("fastapi", reason="the server extra (fastapi) is not installed")

from gpt2.serve.app import _chunk_prefix, _dumps, _Post, _sse_chunk  # noqa: E402

HEAD = {"id": "cmpl-0f", "object": "text_completion", "created": 1765000000, "model": "gpt2 é"}


@pytest.mark.parametrize(
    "text, lp, reason",
    [
        ("hello", None, None),
        ("", None, "length"),
        (' "quoted"\\ \n\t\u2028 🙂 日本', None, None),
        ("\ud800", None, "stop"),  # a lone surrogate: escaped as json.dumps does
        ("x", {"tokens": ["x"], "token_logprobs": [-0.5], "top_logprobs": [{"x": -0.5}]}, None),
    ],
)
def test_a_chunk_is_the_json_of_the_whole_chunk(text, lp, reason):
    for index in (0, 7, 12):
        choice = {"text": text, "index": index, "logprobs": lp, "finish_reason": reason}
        want = f"data: {_dumps({**HEAD, 'choices': [choice]})}\n\n"
        assert _sse_chunk(_chunk_prefix(HEAD), index, text, lp, reason) == want
        assert json.loads(want[6:])["choices"][0] == choice


class _CountingLoop:
    """An event loop's call_soon_threadsafe, counted."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop, self.calls = loop, 0

    def call_soon_threadsafe(self, callback, *args):
        self.calls += 1
        return self.loop.call_soon_threadsafe(callback, *args)


def test_a_steps_events_wake_the_loop_once_and_keep_their_order():
    async def main():
        loop = _CountingLoop(asyncio.get_running_loop())
        post = _Post(loop)
        queues = [asyncio.Queue() for _ in range(3)]
        for step in range(2):  # the loop runs no callback between these puts: one wake-up
            for k in range(40):
                post.put(queues[k % 3], (step, k))
            assert loop.calls == step + 1
            await asyncio.sleep(0)  # the loop drains them
            assert all(q.qsize() for q in queues)
        got = [[q.get_nowait() for _ in range(q.qsize())] for q in queues]
        for i, items in enumerate(got):
            assert items == [(s, k) for s in range(2) for k in range(40) if k % 3 == i]

        # from another thread, as the scheduler puts: every event arrives, in order
        def worker():
            for k in range(500):
                post.put(queues[k % 2], k)

        thread = threading.Thread(target=worker)
        thread.start()
        seen: list[list[int]] = [[], []]
        while len(seen[0]) + len(seen[1]) < 500:
            for i, q in enumerate(queues[:2]):
                while not q.empty():
                    seen[i].append(q.get_nowait())
            await asyncio.sleep(0.001)
        thread.join()
        assert seen == [list(range(0, 500, 2)), list(range(1, 500, 2))]
        assert loop.calls <= 2 + 500

    asyncio.run(main())


def test_a_put_on_a_closed_loop_raises_and_the_next_one_tries_again():
    loop = asyncio.new_event_loop()
    loop.close()
    post = _Post(loop)
    queue: asyncio.Queue = asyncio.Queue()
    for _ in range(2):  # each put raises: none waits behind a wake-up that never came
        with pytest.raises(RuntimeError, match="closed"):
            post.put(queue, 1)
