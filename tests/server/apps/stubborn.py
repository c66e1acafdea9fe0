"""An application whose background job catches its cancellation and goes on
(a bug an application may have): the node must stop all the same."""

from __future__ import annotations

import asyncio

from ramraft import Application, ReplicatedModel, background, command

RUNNING = "stubborn job runs"


class Counter(ReplicatedModel):
    def __init__(self) -> None:
        self.n = 0

    @command
    def bump(self) -> int:
        self.n += 1
        return self.n


@background
async def stubborn(counter: Counter) -> None:
    print(RUNNING, flush=True)
    while True:
        try:
            await asyncio.sleep(0.05)
        except asyncio.CancelledError:
            continue  # the bug: the job never ends


def app() -> Application:
    return Application(Counter(), title="stubborn", jobs=[stubborn])
