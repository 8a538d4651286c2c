"""The MLflow UI as a reviewer uses it, in headless Chromium: the experiment, the smoke run with its Dice curve,
and the registered model with its alias. Screenshots go to tests/artifacts/ (git-ignored)."""

import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request

import mlflow
import pytest

from tests.conftest import ROOT
from tests.tracking.test_offline import free_port

pytestmark = pytest.mark.slow
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
SCREENSHOTS = ROOT / "tests" / "artifacts"


@pytest.fixture
def ui(smoke_run, tmp_path):
    """`mlflow server` (the UI and its API) on a loopback port over the smoke run's store."""
    repo, env, run_id = smoke_run
    port = free_port()
    log = open(tmp_path / "ui.log", "wb")
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port)]
        + ["--backend-store-uri", env["MLFLOW_TRACKING_URI"], "--workers", "1"],
        stdout=log,
        stderr=log,
        start_new_session=True,
    )
    url, deadline = f"http://127.0.0.1:{port}", time.monotonic() + 90
    while True:
        try:
            urllib.request.urlopen(f"{url}/health", timeout=1)
            break
        except OSError:
            assert server.poll() is None and time.monotonic() < deadline, (tmp_path / "ui.log").read_text()[-2000:]
            time.sleep(0.3)
    yield url, run_id
    os.killpg(server.pid, signal.SIGTERM)
    server.wait()


@pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="chromium is not installed (.ci/run installs it)")
def test_the_ui_shows_the_experiment_the_run_with_its_dice_curve_and_the_champion(ui):
    playwright = pytest.importorskip("playwright.sync_api", reason="playwright (test extra) is not installed")
    url, run_id = ui
    client = mlflow.MlflowClient(url)
    run = client.get_run(run_id)
    experiment = run.info.experiment_id
    SCREENSHOTS.mkdir(exist_ok=True)
    with playwright.sync_playwright() as driver:
        # Debian's chromium, never a downloaded one; no sandbox, as tests may run as root
        browser = driver.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1400, "height": 1000})

        page.goto(f"{url}/#/experiments/{experiment}/runs")
        page.get_by_text(run.info.run_name).first.wait_for(timeout=60_000)
        assert page.get_by_text("medseg").first.is_visible()
        page.screenshot(path=SCREENSHOTS / "mlflow_ui_experiment.png")

        page.goto(f"{url}/#/experiments/{experiment}/runs/{run_id}/model-metrics")
        page.get_by_placeholder("Search metric charts").fill("val_dice_mean")
        page.get_by_text("val_dice_mean", exact=True).first.wait_for(timeout=60_000)
        curve = page.get_by_text(f"{run.info.run_name} (val_dice_mean)")  # the legend of a per-epoch line chart
        curve.first.wait_for(timeout=30_000)
        page.wait_for_timeout(1500)  # the plot is drawn after its legend
        assert page.locator("svg path.js-line").count() >= 1, "the Dice curve is drawn as a line"
        page.screenshot(path=SCREENSHOTS / "mlflow_ui_dice_curve.png")

        page.goto(f"{url}/#/models/medseg-hippocampus")
        page.get_by_text("champion").first.wait_for(timeout=60_000)
        assert page.get_by_text("Version 1").first.is_visible()
        page.screenshot(path=SCREENSHOTS / "mlflow_ui_registered_model.png")
        browser.close()
    for name in ("experiment", "dice_curve", "registered_model"):
        assert (SCREENSHOTS / f"mlflow_ui_{name}.png").stat().st_size > 10_000
