"""The whole local platform from one command, in a real headless Chromium: `finetune up` started as a person starts
it, log in with the credentials it printed, train the bundled sample to done from the web UI, predict with the new
model in the Playground, then SIGTERM: every port closes and no process is left. Screenshots of each step are saved
under the test's output folder."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import time

import httpx
import pytest

from tests.conftest import ROOT, finetune_bin
from tests.e2e.test_ui_browser import (
    browser,
    choose_page,
    click_button,
    fill,
    queued_task,
    require_browser,
    text_of,
    wait_text,
)
from tests.e2e.test_up import free_ports, table, up_env
from tests.integration.queue_harness import wait_for
from tests.integration.test_supervisor import port_open, processes_in_groups

# Default run: `finetune up` itself in tests/e2e/test_up.py, the pages in tests/ui and test_ui_browser.py.
pytestmark = [pytest.mark.slow, pytest.mark.extended]
TEXT = "A wonderful, moving film."


def type_text(page, label: str, value: str) -> None:
    from selenium.webdriver.common.by import By

    selector = f'textarea[aria-label="{label}"]'
    wait_for(
        lambda: page.find_elements(By.CSS_SELECTOR, selector), 60, f"the text area {label!r}", interval=0.5
    )
    area = page.find_element(By.CSS_SELECTOR, selector)
    area.clear()
    area.send_keys(value)


def predicted(page, model: str) -> str:
    """Press Predict until the answer of ``model`` shows (the first request after a model is registered loads
    it, which may outlast the UI's 30 s request timeout on a busy machine); returns the page's text."""
    for _ in range(4):
        click_button(page, "Predict")
        try:
            wait_for(lambda: f"{model} v1" in text_of(page) or "timed out" in text_of(page).lower(), 90,
                     "an answer", interval=1)  # fmt: skip
        except AssertionError:
            continue
        if f"{model} v1" in text_of(page):
            return text_of(page)
        time.sleep(5)
    raise AssertionError(f"no answer from {model}: {text_of(page)[-2000:]}")


def test_finetune_up_then_log_in_train_predict_and_stop_in_chromium(tmp_path):
    chromium, driver = require_browser()
    env = up_env(tmp_path)
    home = tmp_path / "q" / "home"
    shots = tmp_path / "screenshots"
    shots.mkdir()
    output = tmp_path / "up.out"
    ports = free_ports(5)
    up = subprocess.Popen([finetune_bin(), "up", "--ports", ",".join(map(str, ports))], env=env.env(),
                          stdout=output.open("w"), stderr=subprocess.STDOUT, cwd=ROOT)  # fmt: skip
    page = None
    try:
        wait_for(lambda: "finetune-platform is up" in output.read_text() or up.poll() is not None, 300, "up")
        shown = table(output.read_text())
        username, password = re.match(r"(\S+) / (\S+) ", shown["login"]).groups()
        state = json.loads((home / "up.json").read_text())
        groups = {part["pid"] for part in state["parts"]}

        page = browser(chromium, driver)
        page.get(shown["web UI"])
        wait_text(page, "Username")
        fill(page, "Username", username)
        fill(page, "Password", password)
        click_button(page, "Log in")
        wait_text(page, f"Signed in as {username}")
        wait_text(page, "New training job")
        page.save_screenshot(str(shots / "1-logged-in.png"))

        from selenium.webdriver.common.by import By

        page.find_element(By.CSS_SELECTOR, 'input[type="file"]').send_keys(
            str(ROOT / "data/sample/train.csv")
        )
        wait_text(page, "train.csv: 320 rows, valid")
        fill(page, "experiment", "up-browser")
        fill(page, "max steps", "6")
        time.sleep(1)
        click_button(page, "Submit")
        task = queued_task(page)
        choose_page(page, "Jobs")
        wait_for(lambda: "✓ done" in text_of(page) or "(failed)" in text_of(page), 400, f"the job {task}",
                 interval=1)  # fmt: skip
        assert "✓ done" in text_of(page), text_of(page)[-2000:]
        page.save_screenshot(str(shots / "2-trained.png"))

        choose_page(page, "Playground")
        type_text(page, "Text", TEXT)
        body = predicted(page, "up-browser")
        page.save_screenshot(str(shots / "3-predicted.png"))
        direct = httpx.post(
            f"{shown['inference'].split()[0]}/predict", json={"text": TEXT}, timeout=60
        ).json()
        assert (direct["model"], direct["version"]) == ("up-browser", 1)
        assert direct["label_name"] in body and f"p = {direct['probability']:.3f}" in body
        # the MLflow UI reads the run from the same store
        found = httpx.get(f"{shown['MLflow UI']}/api/2.0/mlflow/experiments/get-by-name",
                          params={"experiment_name": "up-browser"}, timeout=30)  # fmt: skip
        assert found.status_code == 200, found.text

        up.send_signal(signal.SIGTERM)
        assert up.wait(timeout=300) == 0, output.read_text()[-3000:]
    except BaseException:
        if page is not None:
            page.save_screenshot(str(shots / "failure.png"))
            print(text_of(page)[-3000:])
        print(output.read_text()[-5000:])
        raise
    finally:
        if page is not None:
            page.quit()
        if up.poll() is None:
            up.kill()
    assert output.read_text().rstrip().endswith("stopped by SIGTERM")
    assert [port for port in ports if port_open(port)] == []
    assert processes_in_groups(groups) == []
    assert sorted(p.name for p in shots.iterdir()) == ["1-logged-in.png", "2-trained.png", "3-predicted.png"]
