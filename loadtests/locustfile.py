"""Locust scenarios: citizens opening their code, checkpoint scanners, agencies uploading at a trickle.

    locust -f loadtests/locustfile.py --host http://127.0.0.1:8081 --population-size 10000
    (client keys from HEALTHCODE_CITIZEN_KEY, HEALTHCODE_SCANNER_KEY, HEALTHCODE_AGENCY_KEY)

Answers are checked, not just counted (see loadtests/checks.py): a status without a token, a token that
does not verify with the published keys (JWKS fetched once per process at test start), or a wrong
verify verdict is a failure. Scanners verify tokens citizens were issued in this run, a share of them
expired (kept until past `exp`) or tampered. Agencies run only when `AgencyUser` is named on the command
line (loadtests.run does so unless --no-agencies). Nothing here blocks: waits are Locust's wait times.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import random
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from locust import FastHttpUser, events, task
from locust.env import Environment
from locust.runners import MasterRunner

from loadtests.checks import (
    CHECKPOINT_POLICY,
    EXPIRY_SLACK,
    Expected,
    Issued,
    check_status,
    check_verdict,
    expected_validity,
    tamper,
    verifier_from_jwks,
)
from loadtests.population import DEFAULT_SHARES, LOW_RISK_AREA, Population, parse_shares
from loadtests.shared import TokenPool
from signing import TokenVerifier

log = logging.getLogger("healthcode.load")

KEY_ENV = {"citizen": "HEALTHCODE_CITIZEN_KEY", "scanner": "HEALTHCODE_SCANNER_KEY", "agency": "HEALTHCODE_AGENCY_KEY"}
JSON = "application/json"
HELD_PER_USER = 4  # people a citizen user holds codes for (a family on one phone)
BATCH_DEADLINE = 120.0  # seconds an agency waits for its batch to be done before calling it a failure


@dataclass
class RunState:
    """Per-process state, set at test start; module-level because Locust users share nothing else."""

    population: Population = field(default_factory=Population)
    size: int = 10_000
    verifier: TokenVerifier | None = None
    jwks_fetched_at: float = 0.0
    pool: TokenPool = field(default_factory=TokenPool)
    keys: dict[str, str] = field(default_factory=dict)
    expect_colours: bool = False
    rng: random.Random = field(default_factory=random.Random)


STATE = RunState()


def _options(parser: Any) -> None:
    group = parser.add_argument_group("healthcode")
    group.add_argument(
        "--population-size",
        type=int,
        default=10_000,
        env_var="HEALTHCODE_POPULATION_SIZE",
        help="people loaded into the service (indexes 0..N-1 of the synthetic population)",
    )
    group.add_argument("--population-seed", type=int, default=2022, env_var="HEALTHCODE_POPULATION_SEED")
    group.add_argument(
        "--colours",
        default=",".join(f"{c}={v}" for c, v in DEFAULT_SHARES.items()),
        help="colour shares the population was generated with",
    )
    group.add_argument(
        "--expect-colours",
        action="store_true",
        default=False,
        help="fail a status whose colour, pop-up or vaccination mark differs from the person's "
        "records (only when this run loaded them)",
    )
    group.add_argument("--think-time", type=float, default=1.0, help="mean seconds between a user's requests")
    group.add_argument("--expired-share", type=float, default=0.10, help="share of scans with an expired token")
    group.add_argument("--tampered-share", type=float, default=0.05, help="share of scans with a tampered token")
    group.add_argument("--checkpoints", type=int, default=500, help="how many checkpoints scanners stand at")
    group.add_argument("--agency-interval", type=float, default=5.0, help="seconds between an agency's uploads")
    group.add_argument("--agency-rows", type=int, default=20, help="rows per agency upload")
    group.add_argument("--issuer", default=os.environ.get("HEALTHCODE_ISSUER", "healthcode"),
                       help="the `iss` status tokens carry")  # fmt: skip


def _fetch_jwks(host: str, issuer: str) -> TokenVerifier:
    # Only at test start, before any user runs (gevent makes urllib cooperative anyway).
    with urllib.request.urlopen(f"{host.rstrip('/')}/.well-known/jwks.json", timeout=10) as response:
        return verifier_from_jwks(json.load(response), issuer)


def _test_start(environment: Environment, **_: Any) -> None:
    if isinstance(environment.runner, MasterRunner):
        return  # the master runs no users
    options = environment.parsed_options
    assert options is not None and environment.host
    STATE.population = Population(options.population_seed, parse_shares(options.colours))
    STATE.size = options.population_size
    STATE.expect_colours = options.expect_colours
    STATE.pool.clear()
    STATE.keys = {kind: os.environ.get(name, "") for kind, name in KEY_ENV.items()}
    for kind, name in KEY_ENV.items():
        if not STATE.keys[kind]:
            log.error("%s is not set: every %s request will be refused", name, kind)
    try:
        STATE.verifier = _fetch_jwks(environment.host, options.issuer)
        STATE.jwks_fetched_at = time.monotonic()
    except Exception as exc:  # every status check then fails, saying why
        log.error("cannot fetch the published keys from %s: %s", environment.host, exc)
        STATE.verifier = None


events.init_command_line_parser.add_listener(_options)  # type: ignore[no-untyped-call]
events.test_start.add_listener(_test_start)  # type: ignore[no-untyped-call]


def _bearer(kind: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {STATE.keys.get(kind, '')}"}


class ServiceUser(FastHttpUser):
    """Common to every user: think time, and backing off as the service says when it sheds load."""

    abstract = True
    _backoff_until = 0.0

    def wait_time(self) -> float:
        options = self.environment.parsed_options
        think = (options.think_time if options else 1.0) * random.uniform(0.5, 1.5)
        return max(think, self._backoff_until - time.monotonic())

    def _shed(self, response: Any) -> bool:
        """On 503, note the Retry-After (the next wait honours it) and say so."""
        if response.status_code != 503:
            return False
        try:
            delay = float(response.headers.get("Retry-After") or 1)
        except ValueError:
            delay = 1.0
        self._backoff_until = time.monotonic() + min(delay, 30.0)
        response.failure("503 shed by the service")
        return True


class CitizenUser(ServiceUser):
    """A mini-program backend acting for citizens: open a code, refresh it before it expires, re-open it."""

    weight = 10

    def on_start(self) -> None:
        self.held: list[tuple[int, Issued, float]] = []  # person index, token, when we got it (monotonic)

    def _query(self, index: int, label: str) -> None:
        person = STATE.population.person(index)
        expected = Expected(person.colour, person.popup, person.vaccine_complete) if STATE.expect_colours else None
        with self.client.post(
            "/v1/status",
            json={"id_type": "resident", "id_number": person.number},
            headers=_bearer("citizen"),
            name=f"/v1/status ({label})",
            catch_response=True,
        ) as response:
            if self._shed(response):
                return
            if response.status_code != 200:
                response.failure(f"status answered {response.status_code}")
                return
            problem, issued = check_status(response.json(), STATE.verifier, int(time.time()), expected)
            if problem or issued is None:
                response.failure(problem)
                return
            response.success()
        STATE.pool.add(issued)
        held = (index, issued, time.monotonic())
        for slot, (other, token, _) in enumerate(self.held):
            if other == index or token.exp <= time.time():
                self.held[slot] = held  # the same person again, or one whose code lapsed (app closed)
                return
        if len(self.held) < HELD_PER_USER:
            self.held.append(held)

    @task(6)
    def open_code(self) -> None:
        self._query(random.randrange(STATE.size), "open")

    @task(2)
    def reopen(self) -> None:
        if self.held:
            self._query(random.choice(self.held)[0], "reopen")
        else:
            self.open_code()

    @task(3)
    def refresh(self) -> None:
        """Refresh the code of a held person whose token has less than a fifth of its life left."""
        now, wall = time.monotonic(), time.time()
        for index, issued, got in self.held:
            life = issued.exp - (wall - (now - got))
            if issued.exp - wall <= life / 5:
                self._query(index, "refresh")
                return
        self.open_code()


class ScannerUser(ServiceUser):
    """Checkpoint gates and handhelds verifying codes citizens were given in this run."""

    weight = 5

    @task
    def scan(self) -> None:
        options = self.environment.parsed_options
        assert options is not None
        now = int(time.time())
        draw = random.random()
        tampered = False
        issued = STATE.pool.take_expired(now - EXPIRY_SLACK) if draw < options.expired_share else None
        if issued is not None:
            label, token = "expired", issued.token
        else:
            issued = STATE.pool.pick(STATE.rng)
            if issued is None:
                return  # no citizen has been issued a code yet
            if draw < options.expired_share + options.tampered_share:
                label, token, tampered = "tampered", tamper(issued.token, STATE.rng), True
            else:
                label, token = "valid", issued.token
        number = random.randrange(options.checkpoints)
        checkpoint = f"checkpoint-{number:05d}"
        expect = None if tampered else expected_validity(issued, now)
        policy_sent = number % 2 == 0  # half the checkpoints ask for a recent test
        body = {"token": token, "checkpoint": checkpoint} | ({"policy": CHECKPOINT_POLICY} if policy_sent else {})
        with self.client.post(
            "/v1/verify",
            json=body,
            headers=_bearer("scanner"),
            name=f"/v1/verify ({label})",
            catch_response=True,
        ) as response:
            if self._shed(response):
                return
            if response.status_code != 200:
                response.failure(f"verify answered {response.status_code}")
                return
            problem = check_verdict(
                response.json(),
                checkpoint=checkpoint,
                expect_valid=expect,
                tampered=tampered,
                issued=issued,
                policy_sent=policy_sent,
            )
            if problem:
                response.failure(problem)
            else:
                response.success()


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(int(epoch), UTC).isoformat()


def _epoch(value: object) -> float | None:
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value).timestamp()
        except ValueError:
            return None
    return None


class AgencyUser(ServiceUser):
    """A lab or a carrier uploading small batches at a trickle, then polling until each is done.

    Uploads touch only people whose colour they cannot change (a new negative test for a vaccinated,
    tested person; an arrival from a low-risk area), so colour expectations of citizens still hold.
    After a test batch is done, the status of one of its people must show the new test.
    """

    fixed_count = 1

    def wait_time(self) -> float:
        return max(1.0, self._backoff_until - time.monotonic())

    def on_start(self) -> None:
        self.pending: dict[str, Any] | None = None
        self.next_upload = time.monotonic() + 1.0
        self.uploads = 0

    def _targets(self, count: int) -> list[str]:
        numbers: list[str] = []
        for _ in range(count * 50):
            person = STATE.population.person(random.randrange(STATE.size))
            if person.situation == "vaccinated_negative":
                numbers.append(person.number)
                if len(numbers) == count:
                    break
        return numbers

    @task
    def step(self) -> None:
        if self.pending is None:
            if time.monotonic() >= self.next_upload:
                self._upload()
        elif self.pending.get("checked_status") is False:
            self._check_status()
        else:
            self._poll()

    def _upload(self) -> None:
        options = self.environment.parsed_options
        assert options is not None
        kind = ("test", "travel")[self.uploads % 2]
        self.uploads += 1
        self.next_upload = time.monotonic() + options.agency_interval
        numbers = self._targets(options.agency_rows)
        now = time.time()
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        if kind == "test":
            writer.writerow(("id_type", "id_number", "sampled_at", "result", "lab", "reported_at"))
            writer.writerows(
                ("resident", n, _iso(now - 120), "negative", "loadtest-agency", _iso(now - 60)) for n in numbers
            )
        else:
            writer.writerow(("id_type", "id_number", "area_code", "arrived_at", "mode"))
            writer.writerows(("resident", n, LOW_RISK_AREA, _iso(now - 120), "rail") for n in numbers)
        with self.client.post(
            f"/v1/batches?kind={kind}",
            data=out.getvalue(),
            headers={**_bearer("agency"), "Content-Type": "text/csv", "Idempotency-Key": str(uuid.uuid4())},
            name=f"/v1/batches?kind={kind}",
            catch_response=True,
        ) as response:
            if self._shed(response):
                return
            body = response.json() if response.status_code == 202 else None
            if not isinstance(body, dict) or not isinstance(body.get("id"), int):
                response.failure(f"upload answered {response.status_code}, not 202 with a batch id")
                return
            response.success()
        self.pending = {
            "id": body["id"],
            "kind": kind,
            "rows": len(numbers),
            "number": numbers[0] if numbers else None,
            "sampled_at": int(now - 120),
            "since": time.monotonic(),
        }

    def _poll(self) -> None:
        assert self.pending is not None
        with self.client.get(
            f"/v1/batches/{self.pending['id']}",
            headers=_bearer("agency"),
            name="/v1/batches/{id}",
            catch_response=True,
        ) as response:
            if self._shed(response):
                return
            body = response.json() if response.status_code == 200 else None
            if not isinstance(body, dict):
                response.failure(f"batch answered {response.status_code}")
                self.pending = None
                return
            state = body.get("state")
            if state in ("received", "loading"):
                if time.monotonic() - self.pending["since"] > BATCH_DEADLINE:
                    response.failure(f"batch not done within {BATCH_DEADLINE:.0f} s")
                    self.pending = None
                else:
                    response.success()
                return
            counts = body.get("counts") or {}
            if state != "done":
                response.failure(f"batch {state}")
            elif counts.get("accepted", 0) + counts.get("duplicates", 0) != self.pending["rows"] or counts.get(
                "rejected"
            ):
                response.failure("batch rows rejected or lost")
            else:
                response.success()
                if self.pending["kind"] == "test" and self.pending["number"]:
                    self.pending["checked_status"] = False  # next step: the new test shows in the status
                    return
            self.pending = None

    def _check_status(self) -> None:
        assert self.pending is not None
        pending, self.pending = self.pending, None
        with self.client.post(
            "/v1/status",
            json={"id_type": "resident", "id_number": pending["number"]},
            headers=_bearer("citizen"),
            name="/v1/status (after batch)",
            catch_response=True,
        ) as response:
            if self._shed(response):
                return
            body = response.json() if response.status_code == 200 else None
            last_test = body.get("last_test") if isinstance(body, dict) else None
            sampled = _epoch(last_test.get("sampled_at")) if isinstance(last_test, dict) else None
            if sampled is None or sampled < pending["sampled_at"]:
                response.failure("status does not show the test the agency uploaded")
            else:
                response.success()
