"""The web UI in a real headless Chromium (Selenium + chromedriver) against a real API and worker: log in (no
Streamlit developer chrome: no Deploy button, no main menu; the tab and header name the platform), upload a file
that is not UTF-8 and then the corrected file under the same name, submit two tiny jobs, watch them reach
succeeded with their final metrics and confusion matrix, open the job's comparison view; screenshots of each step
are saved under the test's output folder. A user without admin sees no admin page and none of the admin's runs."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time

import pytest

from tests.conftest import ROOT, finetune_bin, free_port
from tests.integration.queue_harness import http_answers, queue_env, stop_processes, wait_for

# Default run: the same pages through Streamlit's AppTest (tests/ui) and the UI's API client (tests/api).
pytestmark = [pytest.mark.slow, pytest.mark.extended]
PASSWORD = "long enough password"


def require_browser() -> tuple[str, str]:
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    missing = [name for name, path in (("chromium", chromium), ("chromium-driver", driver)) if path is None]
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("selenium (pip)")
    if missing:
        reason = f"the browser test needs {', '.join(missing)}"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason} under CI=true (.ci/run installs the Debian packages)")
        pytest.skip(reason)
    return chromium, driver


def browser(chromium: str, driver: str):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1000"):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(driver), options=options)


def text_of(page) -> str:
    from selenium.webdriver.common.by import By

    return page.find_element(By.TAG_NAME, "body").text


def wait_text(page, text: str, timeout: float = 60) -> None:
    wait_for(lambda: text in text_of(page), timeout, f"the page to show {text!r}", interval=0.5)


def fill(page, label: str, value: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    selector = f'input[aria-label="{label}"]'
    wait_for(lambda: page.find_elements(By.CSS_SELECTOR, selector), 60, f"the field {label!r}", interval=0.5)
    field = page.find_element(By.CSS_SELECTOR, selector)
    field.send_keys(Keys.CONTROL, "a")
    field.send_keys(value)
    field.send_keys(Keys.TAB)


def click_button(page, label: str) -> None:
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By

    def clicked() -> bool:
        # Streamlit re-renders while a script runs: a button found a moment ago may be gone; look again
        try:
            found = [b for b in page.find_elements(By.TAG_NAME, "button") if b.text.strip() == label]
            if found:
                found[0].click()
            return bool(found)
        except StaleElementReferenceException:
            return False

    wait_for(clicked, 60, f"the button {label!r}", interval=0.5)


def queued_task(page, earlier: str | None = None) -> str:
    """The id in the page's "Queued task <id>" message, once it is not ``earlier``."""
    found = []

    def shown() -> bool:
        found[:] = re.findall(r"Queued task ([0-9a-f-]{36})", text_of(page))
        return bool(found) and found[-1] != earlier

    wait_for(shown, 60, "the submission to be confirmed", interval=0.5)
    return found[-1]


def choose_page(page, name: str) -> None:
    from selenium.webdriver.common.by import By

    labels = [label for label in page.find_elements(By.CSS_SELECTOR, "[data-testid=stSidebar] label")
              if label.text.strip() == name]  # fmt: skip
    assert labels, f"no page {name!r} in the sidebar"
    labels[0].click()


def log_in(page, url: str, username: str) -> None:
    page.get(url)
    wait_text(page, "Username")
    fill(page, "Username", username)
    fill(page, "Password", PASSWORD)
    click_button(page, "Log in")
    wait_text(page, f"Signed in as {username}")


def test_log_in_upload_submit_and_watch_a_job_succeed_in_chromium(tmp_path):
    chromium, driver = require_browser()
    env = queue_env(tmp_path / "q", RESULTS_DIR=str(tmp_path / "results"))
    shots = tmp_path / "screenshots"
    shots.mkdir()
    env.cli("db", "upgrade")
    for username, role in (("root", "admin"), ("alice", "user")):
        created = subprocess.run(
            [finetune_bin(), "users", "create", username, "--role", role, "--password-stdin"],
            input=f"{PASSWORD}\n", env=env.env(), capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert created.returncode == 0, created.stderr
    api_port, ui_port = free_port(), free_port()
    processes = [
        subprocess.Popen([finetune_bin(), "api", "--port", str(api_port)], env=env.env(),
                         stdout=(tmp_path / "api.log").open("w"), stderr=subprocess.STDOUT),
        subprocess.Popen([finetune_bin(), "ui", "--port", str(ui_port), "--api-url", f"http://127.0.0.1:{api_port}"],
                         env=env.env(), stdout=(tmp_path / "ui.log").open("w"), stderr=subprocess.STDOUT),
    ]  # fmt: skip
    env.start_worker("browser-worker")
    page = None
    try:
        for port, path in ((api_port, "/health"), (ui_port, "/_stcore/health")):
            wait_for(
                lambda port=port, path=path: http_answers(f"http://127.0.0.1:{port}{path}"),
                120,
                f"port {port}",
            )
        page = browser(chromium, driver)
        url = f"http://127.0.0.1:{ui_port}"

        log_in(page, url, "root")
        wait_text(page, "New training job")
        from selenium.webdriver.common.by import By

        # For users, not app developers: no Deploy button, no main menu; the tab and the header name the platform.
        assert not [b for b in page.find_elements(By.TAG_NAME, "button") if b.text.strip() == "Deploy"]
        for developer_chrome in ("stAppDeployButton", "stMainMenu"):
            assert not page.find_elements(By.CSS_SELECTOR, f"[data-testid={developer_chrome}]"), (
                developer_chrome
            )
        assert page.title == "New training job · finetune-platform"
        assert "finetune-platform" in text_of(page)
        assert "at most 100 MB)" in text_of(page) and "100MB per file" in text_of(
            page
        )  # ours and Streamlit's
        page.save_screenshot(str(shots / "1-new-job.png"))

        # A file that is not UTF-8, then the corrected file under the same name: validated again.
        latin = tmp_path / "latin" / "train.csv"
        latin.parent.mkdir()
        latin.write_bytes(
            (ROOT / "data/sample/train.csv").read_text().replace("film", "café").encode("latin-1")
        )
        page.find_element(By.CSS_SELECTOR, 'input[type="file"]').send_keys(str(latin))
        wait_text(page, "UTF-8")
        page.find_element(By.CSS_SELECTOR, 'input[type="file"]').send_keys(
            str(ROOT / "data/sample/train.csv")
        )
        wait_text(page, "train.csv: 320 rows, valid")
        assert "UTF-8" not in text_of(page)  # the stale error is gone
        fill(page, "experiment", "browser")
        fill(page, "max steps", "6")
        time.sleep(1)
        click_button(page, "Submit")
        first = queued_task(page)
        fill(page, "max steps", "8")  # a second run of the experiment, to compare with
        time.sleep(1)
        click_button(page, "Submit")
        second = queued_task(page, earlier=first)
        page.save_screenshot(str(shots / "2-submitted.png"))

        choose_page(page, "Jobs")  # shows the job submitted last; the worker runs them in order
        wait_for(
            lambda: "✓ done" in text_of(page) or "(failed)" in text_of(page),
            300,
            f"the job {second} to finish",
            interval=1,
        )
        assert "✓ done" in text_of(page), text_of(page)[-2000:]
        assert env.job(first).status == env.job(second).status == "succeeded"
        assert env.job(second).stage == "done"
        wait_text(page, "Confusion matrix")
        body = text_of(page)
        assert "Final metrics" in body and "macro F1" in body and "accuracy" in body
        page.set_window_size(1400, 2800)  # the whole job view: final metrics, confusion matrix, curves
        time.sleep(1)
        page.save_screenshot(str(shots / "3-succeeded.png"))
        page.set_window_size(1400, 1000)

        click_button(page, "Compare with other runs")  # the job's comparison view on the Experiments page
        wait_text(page, "Config differences")
        body = text_of(page)
        runs = [env.job(job_id).run_id for job_id in (second, first)]
        chosen = body[body.index("Compare runs") : body.index("Final metrics")]
        assert re.findall(r"[0-9a-f]{32}", chosen) == runs, body[-2000:]  # both runs, this job's first
        assert "The runs' configs are identical." not in body  # max steps differ (the grid is a canvas)
        page.save_screenshot(str(shots / "4-comparison.png"))

        click_button(page, "Log out")
        log_in(page, url, "alice")
        sidebar = page.find_element(By.CSS_SELECTOR, "[data-testid=stSidebar]").text
        assert "Jobs" in sidebar and "Experiments" in sidebar and "Admin" not in sidebar
        choose_page(page, "Experiments")
        wait_text(page, "No experiments yet.")  # root's runs are not hers
        page.save_screenshot(str(shots / "5-user-without-admin.png"))
        assert sorted(p.name for p in shots.iterdir()) == [
            "1-new-job.png", "2-submitted.png", "3-succeeded.png", "4-comparison.png", "5-user-without-admin.png",
        ]  # fmt: skip
        assert all(p.stat().st_size > 10_000 for p in shots.iterdir())
    except BaseException:
        if page is not None:
            page.save_screenshot(str(shots / "failure.png"))
            print(text_of(page)[-3000:])
        print((tmp_path / "ui.log").read_text()[-3000:])
        raise
    finally:
        if page is not None:
            page.quit()
        stop_processes(processes)
        env.stop_all()
    # `finetune ui` becomes Streamlit: stopping it stops the UI (no orphaned server left on the port)
    assert not http_answers(f"http://127.0.0.1:{ui_port}/_stcore/health")
