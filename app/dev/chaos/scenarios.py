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
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import aiohttp

from app.dev.chaos.load import Driver, Tally
from app.dev.chaos.stack import Stack

SETTLE_TIMEOUT = 60.0
# In flight: enough to keep one API process busy, then many times that (an unbounded queue's p99 grows
# with it; admission control keeps it flat by shedding).
CAPACITY_CONNECTIONS = 64
OVERLOAD_CONNECTIONS = 512


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
    """Many times the connections capacity needs: admitted requests stay fast, the rest are shed quickly.

    The flood runs in a process of its own, closed loop; this process only probes the latency of
    single requests meanwhile, so that its own event loop is not what is measured.
    """
    await _flood(stack, 1.0, CAPACITY_CONNECTIONS)  # warm-up: every person's status in Redis, connections open
    capacity = _rate(await _flood(stack, size.overload_seconds / 2, CAPACITY_CONNECTIONS))
    probe = Tally()
    async with Driver(stack.base_url, stack.keys, stack.numbers, "overload") as driver:
        flooding = asyncio.ensure_future(_flood(stack, size.overload_seconds, OVERLOAD_CONNECTIONS))
        while not flooding.done():
            await driver.status()
            await asyncio.sleep(0.01)  # a probe every 10 ms
        flooded = await flooding
        probe = driver.tally
    outcome = Outcome("overload", probe)
    answers = flooded["answers"]
    assert isinstance(answers, dict)
    goodput = _rate(flooded)
    shed = sum(n for code, n in answers.items() if code in ("429", "503"))
    outcome.notes.append(
        f"capacity {capacity:,.0f}/s at {CAPACITY_CONNECTIONS} connections; at {OVERLOAD_CONNECTIONS}: "
        f"goodput {goodput:,.0f}/s, shed {shed}, answers {answers}"
    )
    unexpected = {code: n for code, n in answers.items() if code not in ("200", "429", "503")}
    if unexpected or flooded["bare_sheds"]:
        outcome.problems.append(f"flood answers {unexpected}, shed without Retry-After {flooded['bare_sheds']}")
    if probe.unexpected:
        outcome.problems.append(f"probe: {probe.unexpected[:3]}")
    if goodput < 0.9 * capacity:
        outcome.problems.append(f"goodput {goodput:,.0f}/s below 90 % of capacity {capacity:,.0f}/s")
    if probe.p99_ms() > 50:
        outcome.problems.append(f"admitted p99 {probe.p99_ms():.0f} ms under overload (> 50)")
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


async def _flood(stack: Stack, seconds: float, connections: int) -> dict[str, object]:
    numbers = stack.root / "numbers.txt"
    numbers.write_text("\n".join(stack.numbers))
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "app.dev.chaos.flood",
        f"{stack.base_url}/v1/status",
        stack.keys["citizen-backend"],
        str(numbers),
        str(seconds),
        str(connections),
        stdout=asyncio.subprocess.PIPE,
    )
    output, _ = await process.communicate()
    result = json.loads(output.decode().strip().splitlines()[-1])
    assert isinstance(result, dict)
    return result


def _rate(flooded: dict[str, object]) -> float:
    answers, seconds = flooded["answers"], flooded["seconds"]
    assert isinstance(answers, dict) and isinstance(seconds, float)
    return int(answers.get("200", 0)) / seconds
