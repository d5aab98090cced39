"""End to end in a real browser: embedded broker and Redis, a worker subprocess, the read API on a
loopback port, and Debian's chromium driven by Playwright. Events produced through Kafka for the
user on screen must show up as that user's new recommendations without a reload.

Needs chromium on the machine (Debian: ``apt-get install -y chromium``; elsewhere point
MUSICREC_CHROMIUM at a Chromium binary), and is skipped without one. Playwright's own browser
download is never used.
"""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import uvicorn
from playwright.sync_api import expect, sync_playwright

from offline.eventlog import EventLog
from offline.retrain import retrain_als
from online_models.batch import EventBatch
from stream.api.app import create_app, server_options
from stream.kafka_io import EventProducer, ensure_topics
from stream.redis_store import RecsClient
from stream.settings import Settings
from tests.conftest import REPO
from tests.services.processes import publish
from tests.services.test_worker_services import wait_value
from tests.synthetic import synthetic_log

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
# the README's screenshot is refreshed on request only, so a test run leaves the checkout clean
README_SCREENSHOT = REPO / "docs" / "dashboard.png"
EVAL_PLOT = REPO / "docs" / "prequential-lastfm.png"


def chromium() -> str:
    path = os.environ.get("MUSICREC_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if not path:  # as .ci/run does for every Debian package it could not install
        pytest.skip("chromium not found: `apt-get install -y chromium chromium-driver` (Debian), or set "
                    "MUSICREC_CHROMIUM to a Chromium binary")
    return path


def seed(settings: Settings) -> str:
    """A published version trained on two taste clusters (even/odd songs), with enough songs for
    the retrain gate to evaluate it, so the dashboard has gate metrics to show."""
    cfg = settings.stream
    log = EventLog(cfg.log_dir)
    log.append(synthetic_log(n_songs=400, n_events=4000))
    result = retrain_als(log, cfg.artifacts_dir, settings.model)
    assert result.artifact.metrics["gate"]["candidate"], result.artifact.metrics
    publish(settings, result.version)
    ensure_topics(cfg)
    return result.version


@contextmanager
def api_server(settings: Settings) -> Iterator[str]:
    """The API under uvicorn in a thread, on a loopback port bound here (no free-port race)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(create_app(settings), log_level="warning", access_log=False,
                                           **server_options()))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise AssertionError("the API server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(15)
        sock.close()


def test_dashboard_shows_a_users_new_recs_live(make_settings, start_worker, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    browser_path = chromium()
    # `never`: the page must show a list that moved away from what u0 just played
    settings = make_settings(model__factors=8, model__relisten="never")
    version = seed(settings)
    cfg = settings.stream
    # the dashboard shows the last evaluation's plot: use the README's real Last.fm run
    report = Path(cfg.data_dir) / "reports" / "prequential.png"
    report.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(EVAL_PLOT, report)
    worker = start_worker(settings)
    worker.wait(lambda s: s["version"] == version, 60, "model load")
    client = RecsClient(cfg.redis_url, cfg.redis_namespace)
    before = wait_value(client, "u0", lambda v: v.model_version == version)

    with api_server(settings) as base, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=browser_path, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1360, "height": 1000})
            page.set_default_timeout(20_000)
            page.goto(base)
            expect(page.get_by_test_id("model-version")).to_have_text(version)
            expect(page.get_by_test_id("status")).to_have_text("live")
            expect(page.get_by_test_id("plot")).to_be_visible()
            assert page.get_by_test_id("plot").evaluate("img => img.naturalWidth") > 0
            expect(page.get_by_test_id("gate-metrics").locator("tbody tr")).not_to_have_count(0)
            expect(page.get_by_test_id("gate-reason")).to_contain_text("retrain gate: publish")
            expect(page.get_by_test_id("plot-placeholder")).to_be_hidden()

            page.get_by_test_id("user-input").fill("u0")
            page.get_by_test_id("user-submit").click()
            recs = page.get_by_test_id("rec")
            expect(recs).to_have_count(10)
            shown_before = [li.get_attribute("data-song") for li in recs.all()]
            assert shown_before == before.song_ids[:10]
            expect(page.get_by_test_id("recs-version")).to_have_text(version)
            expect(page.get_by_test_id("recs-fallback")).to_be_hidden()
            expect(page.get_by_test_id("event")).to_have_count(10)
            updated_before = page.get_by_test_id("recs-updated").get_attribute("data-ts")

            # u0 (even cluster) now plays 30 odd songs, produced through Kafka like any client would
            odd = [f"s{i}" for i in range(1, 60, 2)]
            now = time.time()
            batch = EventBatch.from_columns(np.array(["u0"] * len(odd), dtype=object), np.array(odd, dtype=object),
                                            ts=now + np.arange(len(odd)) * 1e-3,
                                            event_ids=np.array([f"odd-{i}" for i in range(len(odd))], dtype=object))
            with EventProducer(cfg) as producer:
                producer.send_events(batch)

            # the page picks the new list up by itself: no reload, no click
            expect(page.get_by_test_id("recs-last-event")).to_have_text("odd-29", timeout=30_000)
            shown_after = [li.get_attribute("data-song") for li in recs.all()]
            stored = client.get("u0", 10)
            assert stored is not None
            assert shown_after == stored.song_ids, "the page shows what the worker wrote to Redis"
            assert shown_after != shown_before and not set(shown_after) & set(odd), "played songs are not re-offered"
            assert sum(int(s[1:]) % 2 for s in shown_after if s) >= 5, f"u0's list moved to odd songs: {shown_after}"
            assert page.get_by_test_id("recs-updated").get_attribute("data-ts") != updated_before
            # the user's last events come from the event log, newest first
            expect(page.get_by_test_id("event").first).to_contain_text("s59")
            # the API samples freshness from the stored values once a second: allow a few rounds under load
            expect(page.get_by_test_id("freshness-p50")).not_to_have_text("–", timeout=15_000)
            expect(page.get_by_test_id("dlq")).to_have_text("0")
            # events/s comes from the worker's counters, published every 2 s
            expect(page.get_by_test_id("events-per-s")).not_to_have_text("0.0", timeout=10_000)

            shot = README_SCREENSHOT if os.environ.get("MUSICREC_UPDATE_SCREENSHOT") else tmp_path / "dashboard.png"
            page.screenshot(path=str(shot), full_page=True, animations="disabled")
        finally:
            browser.close()
