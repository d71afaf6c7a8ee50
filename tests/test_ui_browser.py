"""``openic ui`` in a real browser: Debian's Chromium driven by Playwright finds the job's MLflow run and its
``validation:accuracy`` chart, and saves a screenshot. ``.ci/run`` installs Chromium; never ``playwright install``."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from serving_helpers import SRC, free_port

pytest.importorskip("mlflow")
sync_api = pytest.importorskip("playwright.sync_api")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(CHROMIUM is None, reason="no system Chromium: apt-get install chromium")]
# The probe's flags: Chromium's own background connections are refused on a closed network
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]
JOB = "image-classification-2026-12-02-10-00-00-000"


def _tracked_job(home: Path) -> str:
    """One job's MLflow run, logged the way a training job logs it (step = epoch)."""
    from openic.sdk.tracking import JobTracker

    tracker = JobTracker(JOB)
    tracker.log_params({"num_layers": "18", "epochs": "3"})
    for epoch in range(3):
        tracker.log_metrics({"train:accuracy": 0.5 + 0.1 * epoch, "validation:accuracy": 0.4 + 0.15 * epoch,
                             "epoch_time": 3.0}, step=epoch, epoch=epoch)
    tracker.close()
    tracker.finish("Completed", [])
    return tracker.run_id


def _wait_for(url: str, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"openic ui exited {proc.returncode}: {proc.communicate()}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"openic ui did not answer {url} in {timeout}s")


def test_openic_ui_shows_the_jobs_validation_accuracy_chart(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENIC_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    run_id = _tracked_job(tmp_path / "home")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen([sys.executable, "-m", "openic", "ui", "--port", str(port)], start_new_session=True,
                            env={**os.environ, "PYTHONPATH": SRC}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        _wait_for(url + "/", proc)
        with urllib.request.urlopen(f"{url}/api/2.0/mlflow/runs/get?run_id={run_id}", timeout=10) as r:
            experiment = json.loads(r.read())["run"]["info"]["experiment_id"]
        shot = tmp_path / "openic-ui.png"
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.goto(f"{url}/#/experiments/{experiment}/runs", wait_until="load")
            page.get_by_text(JOB).first.wait_for(timeout=60_000)  # the job's run in the experiment's list
            page.get_by_text(JOB).first.click()
            page.get_by_text("Model metrics").first.click()
            page.get_by_text("validation:accuracy").first.wait_for(timeout=60_000)
            assert page.url.endswith(f"/runs/{run_id}/model-metrics")
            page.wait_for_timeout(1000)  # let the chart draw
            page.screenshot(path=str(shot))
            browser.close()
        assert shot.stat().st_size > 20_000
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
