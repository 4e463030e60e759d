"""Tasks from asyncio code: ``await`` a future, ``asyncio.gather``, ``run_in_executor``.

A ``ua.Future`` is a ``concurrent.futures.Future`` that can also be awaited, so an async
program (a web handler, a crawler) hands CPU-bound work to the workers without blocking
its event loop:

* ``await ua.submit(fn, x)``: the coroutine is suspended until the task is done; the
  loop keeps serving other coroutines meanwhile;
* ``await asyncio.gather(*futures)``: many tasks at once, results in argument order;
* ``await loop.run_in_executor(ex, fn, x)`` with a ``ua.Executor``: the standard way to
  hand work to any ``concurrent.futures`` executor works with ours unchanged.

On the serial backend there are no workers: ``submit`` runs the task right away, in
this process, and returns a future that is already done, so the event loop is blocked
while each task runs and nothing overlaps. The results are the same; use serial to
debug (breakpoints work in the task), not to serve.

This program names no backend; switch it with configuration alone:

    UNIDIST_API_BACKEND=serial python examples/asyncio_demo.py
    unidist-api run --backend ray examples/asyncio_demo.py
"""

import asyncio
import hashlib

import unidist_api as ua


def digest(text: str, rounds: int = 20_000) -> str:
    """CPU-bound work: hash a text many times over (a stand-in for real work)."""
    data = text.encode()
    for _ in range(rounds):
        data = hashlib.sha256(data).digest()
    return data.hex()[:12]


async def handle_request(name: str) -> str:
    """An async handler: awaits one task; other handlers run while it waits."""
    result = await ua.submit(digest, name)
    return f"{name}: {result}"


async def main() -> None:
    # 1. await one future
    print("one task:", await ua.submit(digest, "hello"))

    # 2. gather: several tasks at once; results in the order of the arguments,
    #    whatever order the tasks finish in
    words = ["alpha", "beta", "gamma", "delta"]
    results = await asyncio.gather(*(ua.submit(digest, word) for word in words))
    print("gathered:", dict(zip(words, results, strict=True)))

    # coroutines that each await a task, run concurrently by the event loop
    for line in await asyncio.gather(*(handle_request(n) for n in ("ann", "bob", "cy"))):
        print("handled", line)

    # 3. run_in_executor: the stdlib way to offload a blocking call, with our executor
    loop = asyncio.get_running_loop()
    with ua.Executor() as ex:  # an executor of its own, configured as ua.submit's is
        offloaded = await asyncio.gather(
            *(loop.run_in_executor(ex, digest, word, 1000) for word in words)
        )
    # (leaving the with block waits for ex to shut down; its tasks are all done by now)
    print("run_in_executor:", offloaded)

    # a timeout on the wait, as for any awaitable (the task itself is not interrupted)
    print("within a minute:", await asyncio.wait_for(ua.submit(digest, "soon", 10), 60))


if __name__ == "__main__":
    asyncio.run(main())
