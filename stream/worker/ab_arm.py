"""The A/B test a worker serves: the treatment version next to the published one, on one online state.

The test's definition is in Redis (``stream.abtest``); each worker loads the treatment version aside
with a :class:`VersionFollower` of its own (a new one per test, so a version refused in one test is
tried again in the next), then serves it to the test's share of users through a second
``OnlineALS`` over the same online state: both arms learn from every event, only the item side differs.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from index_manager.follower import VersionFollower
from online_models.abtest import ArmMetrics
from online_models.batch import EventBatch
from online_models.online import OnlineALS
from online_models.serving import ServingModel
from stream.abtest import ABTest

log = logging.getLogger("musicrec.worker")


@dataclass
class ABRun:
    test: ABTest
    model: OnlineALS  # shares the users' online state with the control arm's
    metrics: ArmMetrics


class ABArm:
    def __init__(self, control: OnlineALS, load: Callable[[str], ServingModel]) -> None:
        self.control = control
        self.load = load
        self.run: ABRun | None = None
        self._follower: VersionFollower[ServingModel] | None = None
        self._salt: str | None = None

    def wanted(self, test: ABTest | None) -> bool:
        """Whether ``test`` is a test this worker does not serve yet."""
        return test is not None and (self.run is None or self.run.test.salt != test.salt)

    def prepare(self, test: ABTest) -> ServingModel | None:
        """Load and check the treatment version aside; None when it is refused (logged once per test)."""
        if self._follower is None or self._salt != test.salt:
            self._follower, self._salt = VersionFollower(self.load, what="A/B treatment"), test.salt
        return self._follower.prepare(test.treatment)

    def start(self, test: ABTest, treatment: ServingModel) -> None:
        """Serve a prepared treatment (run where batches run)."""
        if self._follower is None or self._salt != test.salt or not self._follower.install(treatment, test.treatment):
            return
        self.run = ABRun(test, self.control.with_holder(self._follower.holder), ArmMetrics(horizon=test.horizon))
        log.warning("A/B test: %.0f%% of users get %s", 100 * test.share, test.treatment)

    def stop(self) -> None:
        if self.run is not None:
            log.warning("A/B test of %s stopped: %s", self.run.test.treatment, self.run.metrics.summary())
        self.run = None

    def observe(self, events: EventBatch) -> None:
        """Score events against the lists served before them."""
        if self.run is not None:
            self.run.metrics.observe(events)

    def treatment(self) -> ServingModel | None:
        served = self.run.model.holder.peek() if self.run is not None else None
        return None if served is None else served.model

    def summary(self) -> dict[str, Any] | None:
        if self.run is None:
            return None
        return {"salt": self.run.test.salt, "treatment": self.run.test.treatment, "arms": self.run.metrics.summary()}
