"""Executors: who decides which work items run together, and when.

A work item is (prompt_id, attempt). Every executor takes the items, runs them
through a `StageRunner` (`rv2.generate.stages`) and re-queues failed attempts by
the one retry rule below, so the in-process, native and Ray executors agree on
which attempts exist. The CLI picks one by name (`--executor`).
"""
from __future__ import annotations

import collections
from typing import Any, Callable, Protocol, Sequence

from rv2.generate.stages import StageRunner, WorkItem

ResultCallback = Callable[[dict, bool], None]   # (written record, final for its prompt)


def next_attempt(record: dict, max_attempts: int) -> int | None:
    """The one retry rule: the attempt that follows `record`, or None when its prompt
    is settled (accepted, or out of attempts). Pure: same record, same answer."""
    if record["qc_pass"]:
        return None
    nxt = int(record["attempt"]) + 1
    return nxt if nxt < max_attempts else None


class Executor(Protocol):
    """Runs `work` to completion: every item and each retry the rule asks for, calling
    `on_result(record, final)` once per finished attempt. Stops (leaving the store
    consistent) by raising."""

    def run(self, runner: StageRunner, work: Sequence[WorkItem], max_attempts: int,
            on_result: ResultCallback | None = None) -> None: ...


class RemoteExecutor(Executor, Protocol):
    """An executor whose workers build their own stages (other processes or machines).

    `generate_dataset` then loads nothing in the driver: it calls `start(recipe,
    out_dir)`, which starts the workers, has each build its stages from the picklable
    `rv2.generate.recipe.StageRecipe` and returns their `StageInfo` (to open the store
    with); then `run` with a runner whose `stages` is None: the executor uses its
    `plan` and `base_records`, and journals the workers' results through its
    `writer` (the store, opened in multi-writer mode: `commit`). `report()` gives the
    per-worker figures for the summary; `close()` stops the workers (always called)."""

    name: str

    def start(self, recipe, out_dir) -> Any: ...

    def report(self) -> dict: ...

    def close(self) -> None: ...


class InProcessExecutor:
    """Batches of up to `batch_size` items, one batch at a time, in this process.
    Retries go first into the next batch, so a prompt's fate is settled soon."""

    name = "inprocess"

    def __init__(self, batch_size: int = 8):
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.batch_size = batch_size

    def run(self, runner: StageRunner, work: Sequence[WorkItem], max_attempts: int,
            on_result: ResultCallback | None = None) -> None:
        fresh = collections.deque(work)
        retry: collections.deque = collections.deque()
        while fresh or retry:
            batch = []
            while len(batch) < self.batch_size and (retry or fresh):
                batch.append(retry.popleft() if retry else fresh.popleft())
            for rec in runner.process(batch):
                nxt = next_attempt(rec, max_attempts)
                if nxt is not None:
                    retry.append((rec["prompt_id"], nxt))
                if on_result is not None:
                    on_result(rec, nxt is None)


__all__ = ["next_attempt", "Executor", "RemoteExecutor", "InProcessExecutor", "ResultCallback"]
