"""The scheduler's step budget: which prompt chunks share a step.

The fast engine prefills the rows of adjacent slots in one graph, each padded
to the longest row's bucket (gpt2.engine.fast.prefill_bucket), so a step takes,
beside every decode row, the oldest prompt's chunk and those of the same
bucket; a prompt of another bucket waits for a step of its own size."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from gpt2.engine.fast import prefill_bucket
from gpt2.serve.scheduler import Scheduler


def _request(admitted: int, prompt_left: int = 0, started: bool = False):
    member = SimpleNamespace(going=True, started=started, prompt_left=prompt_left)
    return SimpleNamespace(member=member, admitted=admitted)


def _scheduler(max_batch: int, max_step_tokens: int = 512) -> Scheduler:
    model = SimpleNamespace(engine=SimpleNamespace(n_slots=max_batch))
    return Scheduler(model, max_batch, max_step_tokens=max_step_tokens)


@pytest.mark.parametrize(
    "lefts, want",
    [
        # the oldest (5: bucket 16) with 12 (16); 150 (256) and 20 (32) wait
        ([5, 150, 20, 12], [5, 0, 0, 12]),
        # the oldest 150 (256) alone: the short ones would be padded to 256 beside it
        ([150, 5, 12, 3], [150, 0, 0, 0]),
        # one bucket for all: all go
        ([40, 60, 33, 64], [40, 60, 33, 64]),
    ],
)
def test_a_step_takes_the_chunks_of_the_oldest_prompts_bucket(lefts, want):
    s = _scheduler(6)
    # admitted out of slot order: the oldest is the one admitted first, wherever it sits
    order = [2, 0, 3, 1][: len(lefts)]
    members = [None] * 6
    by_age = sorted(range(len(lefts)), key=lambda k: order[k])
    for k, i in enumerate(by_age):
        members[i] = _request(k, lefts[k])
    members[5] = _request(99, started=True)  # a decode row: one token, always in
    got = s._budgets(members)
    assert [got[i] for i in by_age] == want
    assert got[4] == 0 and got[5] == 0  # no member; a decode member has no chunk
    sizes = {prefill_bucket(n) for n in got if n}
    assert len(sizes) == 1, sizes


def test_the_budget_still_bounds_the_step():
    s = _scheduler(3, max_step_tokens=40)
    members = [_request(0, 100), _request(1, 30), _request(2, started=True)]
    got = s._budgets(members)
    # 39 tokens left beside the decode row: the oldest's chunk takes them; the other
    # prompt waits for the next step
    assert got[0] <= 39 and got[0] + got[1] <= 39
    assert got[0] > 0 and got[1] == 0
