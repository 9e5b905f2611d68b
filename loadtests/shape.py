"""A run in three phases, so one run measures each endpoint alone and then the real mix.

    status  (first 40 %): citizens only, every request a POST /v1/status
    verify  (next 30 %):  scanners only, verifying the tokens citizens were issued in the first phase
    mixed   (last 30 %):  citizens, scanners and (if named on the command line) agencies together

The server's own counters, sampled each second by loadtests.run, then show what one request of each
endpoint costs in server CPU (loadtests.capacity). Users and length come from HEALTHCODE_LOAD_USERS and
HEALTHCODE_LOAD_SECONDS (loadtests.run sets them); load this file after the locustfile:
`locust -f loadtests/locustfile.py,loadtests/shape.py`.
"""

from __future__ import annotations

import os

from locust import LoadTestShape
from locust.user import User

PHASES = (("status", 0.4, ("CitizenUser",)), ("verify", 0.7, ("ScannerUser",)),
          ("mixed", 1.0, ("CitizenUser", "ScannerUser", "AgencyUser")))  # fmt: skip


DRAIN_SECONDS = 1.0


class PhasedShape(LoadTestShape):
    def tick(self) -> tuple[int, float, list[type[User]]] | None:
        users = int(os.environ.get("HEALTHCODE_LOAD_USERS", "50"))
        seconds = float(os.environ.get("HEALTHCODE_LOAD_SECONDS", "30"))
        elapsed = self.get_run_time()  # type: ignore[no-untyped-call]
        assert self.runner is not None
        available = self.runner.environment.user_classes_by_name
        start = 0.0
        for _, end, names in PHASES:
            if elapsed < end * seconds:
                classes = [available[n] for n in names if n in available]
                if start and elapsed < start + DRAIN_SECONDS:
                    # Locust keeps running users when only the classes change: stop them all first.
                    return 0, float(users), classes
                # Agencies are a trickle: one user, not a share of the crowd.
                return users + ("AgencyUser" in [c.__name__ for c in classes]), float(users), classes
            start = end * seconds
        return None
