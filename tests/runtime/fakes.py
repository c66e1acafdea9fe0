"""What fake runtimes share (NodeAPI is given them instead of a RaftRuntime)."""

from __future__ import annotations

import asyncio


class Offers:
    """``offer`` as RaftRuntime has it, for a fake that writes ``propose``
    (a coroutine): the future of its answer. NodeAPI awaits that future
    with its deadline; settled by the deadline (TimeoutError) or cancelled
    by the caller, it stops ``propose``, as the runtime drops a command it
    has not proposed yet."""

    async def propose(self, command: bytes) -> tuple[int, object]:
        raise NotImplementedError

    def offer(self, command: bytes) -> asyncio.Future[tuple[int, object]]:
        answer: asyncio.Future[tuple[int, object]] = asyncio.get_running_loop().create_future()
        task = asyncio.ensure_future(self.propose(command))

        def settle(done: asyncio.Future[tuple[int, object]]) -> None:
            if answer.done():
                return
            if done.cancelled():
                answer.cancel()
            elif done.exception() is not None:
                answer.set_exception(done.exception())  # type: ignore[arg-type]
            else:
                answer.set_result(done.result())

        task.add_done_callback(settle)
        answer.add_done_callback(lambda _: task.cancel())
        return answer
