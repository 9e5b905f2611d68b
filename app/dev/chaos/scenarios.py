"""The fault suite's scenarios: each runs the load while it causes one fault, then checks what was kept.

A scenario passes when no answer was an unexpected 5xx (a 503 with Retry-After is the service shedding
or saying a dependency is down, which is allowed), every scan of a valid token was stored, every row of
every accepted upload was stored, and its own latency or goodput bound holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import inspect
import json
import os
import sys
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import aiohttp

from app.dev.chaos.load import Driver, Tally
from app.dev.chaos.stack import Stack

SETTLE_TIMEOUT = 60.0
# Offered load under overload, as a multiple of the capacity measured just before.
OVERLOAD_FACTOR = 3


@dataclass(frozen=True)
class Size:
    """How big a run is: `make chaos` runs the full size, the test suite a short one."""

    seconds: float
    rate: float
    slow_uploads: int
    overload_seconds: float


FULL = Size(seconds=12.0, rate=150.0, slow_uploads=12, overload_seconds=8.0)
SHORT = Size(seconds=3.0, rate=60.0, slow_uploads=6, overload_seconds=3.0)


@dataclass
class Outcome:
    name: str
    tally: Tally
    scans_stored: int = 0
    rows_accepted: int = 0
    rows_stored: int = 0
    batches_failed: int = 0
    notes: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    admitted_p99_ms: float | None = None  # when the load driver measured it, not this process's tally

    @property
    def passed(self) -> bool:
        return not self.problems


Scenario = Callable[[Stack, Size], Awaitable[Outcome]]


async def steady(stack: Stack, size: Size) -> Outcome:
    """No fault: the baseline every other scenario is compared with."""
    async with Driver(stack.base_url, stack.keys, stack.numbers, "steady") as driver:
        await driver.run(size.seconds, size.rate)
        return await settle("steady", stack, driver)


async def redis_restart(stack: Stack, size: Size) -> Outcome:
    """Redis killed mid-load and started again empty (no persistence)."""
    return await _down_midway("redis-restart", stack, size, stack.stop_redis, stack.start_redis)


async def postgres_stop(stack: Stack, size: Size) -> Outcome:
    """Postgres stopped (immediate: a crash) mid-load and started again."""
    return await _down_midway("postgres-stop", stack, size, stack.stop_postgres, stack.start_postgres)


async def _down_midway(
    name: str, stack: Stack, size: Size, stop: Callable[[], Awaitable[None]], start: Callable[[], Awaitable[None]]
) -> Outcome:
    """The load runs throughout; a server is down for its middle third."""
    async with Driver(stack.base_url, stack.keys, stack.numbers, name) as driver:
        load = asyncio.ensure_future(driver.run(size.seconds, size.rate))
        await asyncio.sleep(size.seconds / 3)  # a third of the load before the fault
        await stop()
        await asyncio.sleep(size.seconds / 3)
        await start()
        await load
        return await settle(name, stack, driver)


async def poison(stack: Stack, size: Size) -> Outcome:
    """A scan whose checkpoint Postgres cannot store, and an upload of unbalanced quotes, amid the load."""
    async with Driver(stack.base_url, stack.keys, stack.numbers, "poison") as driver:
        load = asyncio.ensure_future(driver.run(size.seconds, size.rate))
        await poll(lambda: bool(driver.tally.tokens))  # the first status answer brings a token to scan
        await driver.verify(checkpoint="gate\x00poison")
        bad_quotes = gzip.compress(b'id_number,sampled_at,result,lab\n"' + b"\n" * 2_000_000)
        try:
            async with driver.session.post(
                f"{stack.base_url}/v1/batches?kind=test",
                data=bad_quotes,
                headers={
                    "Authorization": f"Bearer {stack.keys['agency']}",
                    "Content-Type": "text/csv",
                    "Content-Encoding": "gzip",
                },
            ) as r:
                driver.tally.answers[f"bad-quote-upload {r.status}"] += 1
                if r.status >= 500:
                    driver.tally.unexpected.append(f"bad-quote upload: {r.status}")
        except (aiohttp.ClientError, TimeoutError) as exc:
            driver.tally.answers["bad-quote-upload failed"] += 1
            driver.tally.unexpected.append(f"bad-quote upload: {exc.__class__.__name__}")
        await load
        return await settle("poison", stack, driver)


async def slow_uploads(stack: Stack, size: Size) -> Outcome:
    """Uploads that trickle in, more than a pool holds, while citizens and scanners go on."""
    async with Driver(stack.base_url, stack.keys, stack.numbers, "slow-uploads") as driver:
        stop = asyncio.Event()
        trickles = [asyncio.ensure_future(_trickle(driver.session, stack, stop)) for _ in range(size.slow_uploads)]
        await driver.run(size.seconds, size.rate, uploads_per_second=0)
        stop.set()
        await asyncio.gather(*trickles, return_exceptions=True)
        outcome = await settle("slow-uploads", stack, driver)
        if driver.tally.p99_ms() > 250:
            outcome.problems.append(f"admitted p99 {driver.tally.p99_ms():.0f} ms with slow uploads open (> 250)")
        return outcome


async def overload(stack: Stack, size: Size) -> Outcome:
    """Three times the capacity just measured, offered open loop (loadtests/overload.py: requests are due
    at a fixed rate whatever the answers, the way a crowd of phones sends): goodput stays near capacity,
    admitted requests stay quick, the rest get fast 503s with Retry-After.

    The API and the driver each get a core of their own while it runs (as `make bench` pins them), so
    that what is measured is the API, not the two taking turns on one core.
    """
    command = [
        sys.executable, "-m", "loadtests.overload", "--url", stack.base_url, "--key", stack.keys["citizen-backend"],
        "--path", "/v1/status", "--body", json.dumps({"id_number": stack.numbers[0]}),
        "--factor", str(OVERLOAD_FACTOR), "--seconds", str(size.overload_seconds / 2), "--warmup", "1",
    ]  # fmt: skip
    with stack.api_on_own_core() as driver_cpus:
        driver = await asyncio.create_subprocess_exec(
            *command, stdout=asyncio.subprocess.PIPE, preexec_fn=lambda: os.sched_setaffinity(0, driver_cpus)
        )
        output, _ = await driver.communicate()
    if driver.returncode != 0:
        return Outcome("overload", Tally(), problems=[f"the load driver failed (exit {driver.returncode})"])
    result = json.loads(output)
    capacity, offered, loaded = result["capacity"], result["offered_per_s"], result["overload"]
    tally = Tally(answers=Counter({f"status {code}": n for code, n in loaded["by_status"].items()}))
    outcome = Outcome("overload", tally, admitted_p99_ms=loaded["admitted_p99_ms"])
    goodput, ceiling = loaded["goodput_per_s"], capacity["goodput_per_s"]
    outcome.notes.append(
        f"capacity {ceiling:,.0f}/s; offered {offered:,.0f}/s ({OVERLOAD_FACTOR}x): goodput {goodput:,.0f}/s "
        f"({goodput / ceiling:.0%}), admitted p50 {loaded['admitted_p50_ms']:.1f} ms, shed p99 "
        f"{loaded['shed_p99_ms']:.1f} ms, not sent in time {loaded['errors']}"
    )
    unexpected = {code: n for code, n in loaded["by_status"].items() if code not in ("200", "503")}
    if unexpected or loaded["shed_without_retry_after"]:
        outcome.problems.append(f"answers {unexpected}, shed without Retry-After {loaded['shed_without_retry_after']}")
    if goodput < 0.9 * ceiling:
        outcome.problems.append(f"goodput {goodput:,.0f}/s below 90 % of capacity {ceiling:,.0f}/s")
    if loaded["admitted_p99_ms"] > 50:
        outcome.problems.append(f"admitted p99 {loaded['admitted_p99_ms']:.0f} ms under overload (> 50)")
    return outcome


SCENARIOS: dict[str, Scenario] = {
    "steady": steady,
    "redis-restart": redis_restart,
    "postgres-stop": postgres_stop,
    "poison": poison,
    "slow-uploads": slow_uploads,
    "overload": overload,
}


async def settle(name: str, stack: Stack, driver: Driver) -> Outcome:
    """Wait (bounded) for accepted batches and scans to be stored, then compare with what was sent."""
    tally = driver.tally
    outcome = Outcome(name, tally)
    done: dict[str, dict[str, object]] = {}

    async def batches_finished() -> bool:
        for location in tally.batches:
            view = None if location in done else await _batch(driver.session, stack, location)
            if view is not None and view["state"] in ("done", "failed"):
                done[location] = view
        return len(done) == len(tally.batches)

    try:
        await poll(batches_finished, interval=0.1)
    except TimeoutError:
        outcome.problems.append(
            f"{len(tally.batches) - len(done)} of {len(tally.batches)} accepted batches not finished "
            f"{SETTLE_TIMEOUT:.0f} s after the load"
        )
    for view in done.values():
        counts = view["counts"]
        assert isinstance(counts, dict)
        if view["state"] == "done":
            outcome.rows_accepted += int(counts["accepted"])
        else:
            outcome.batches_failed += 1
            outcome.notes.append(f"batch {view['id']} failed: {view['error']}")
    rows = await stack.fetchval("SELECT count(*) FROM nucleic_tests WHERE lab = $1", driver.lab)
    outcome.rows_stored = int(str(rows))

    async def scans_stored() -> bool:
        outcome.scans_stored = await _scans(stack, driver.checkpoint)
        return outcome.scans_stored >= tally.scans_sent

    with contextlib.suppress(TimeoutError):  # judged below: a shortfall is the finding
        await poll(scans_stored, interval=0.1)
    if tally.unexpected:
        outcome.problems.append(f"{len(tally.unexpected)} unexpected answers, e.g. {tally.unexpected[:3]}")
    if outcome.scans_stored != tally.scans_sent:
        outcome.problems.append(f"scans sent {tally.scans_sent}, stored {outcome.scans_stored}")
    if outcome.rows_stored != outcome.rows_accepted:
        outcome.problems.append(f"rows accepted {outcome.rows_accepted}, stored {outcome.rows_stored}")
    return outcome


async def poll(check: Callable[[], bool | Awaitable[bool]], interval: float = 0.01) -> None:
    """Until `check` holds, looking every `interval` seconds, for at most SETTLE_TIMEOUT."""
    async with asyncio.timeout(SETTLE_TIMEOUT):
        while True:
            result = check()
            if await result if inspect.isawaitable(result) else result:
                return
            await asyncio.sleep(interval)


async def _scans(stack: Stack, checkpoint: str) -> int:
    return int(str(await stack.fetchval("SELECT count(*) FROM scan_events WHERE checkpoint = $1", checkpoint)))


async def _batch(session: aiohttp.ClientSession, stack: Stack, location: str) -> dict[str, object] | None:
    headers = {"Authorization": f"Bearer {stack.keys['agency']}"}
    try:
        async with session.get(stack.base_url + location, headers=headers) as r:
            return await r.json() if r.status == 200 else None
    except aiohttp.ClientError:
        return None


async def _trickle(session: aiohttp.ClientSession, stack: Stack, stop: asyncio.Event) -> None:
    async def body() -> AsyncIterator[bytes]:
        yield b"id_number,sampled_at,result,lab\n"
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), 1.0)
            except TimeoutError:
                yield b" "

    headers = {"Authorization": f"Bearer {stack.keys['agency']}", "Content-Type": "text/csv"}
    async with session.post(f"{stack.base_url}/v1/batches?kind=test", data=body(), headers=headers) as r:
        await r.read()
