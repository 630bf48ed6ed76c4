"""The status page (`GET /ui`) in a real headless browser: Debian's chromium driven by
Selenium through the system chromedriver (`make ui-deps` installs both), against a
live rollout on real processes (demo models, the sidecar's policy engine, Envoy with
the .wasm). Screenshots are kept under .run/artifacts/test_ui/ (the run folder
`make demo` uses too; `make clean` removes it).

Timing: the first two steps last at least 12 s and 8 s (min_duration_s) so the page can be read
at it; later steps 1 s; the engine ticks every 250 ms and the page polls every
second, so waits below allow several times that."""

import os
import shutil
import urllib.request
from pathlib import Path

import pytest

from harness import ROOT, Load, wait_for
from rollout_stack import USERS, Stack, policy, step

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
ARTIFACTS = ROOT / ".run" / "artifacts" / "test_ui"
TOKEN = "operator-token-for-the-ui-test"


@pytest.fixture
def browser():
    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        pytest.fail("chromium and chromedriver are missing: run `make ui-deps`")
    os.environ["SE_OFFLINE"] = "true"  # never let Selenium Manager download anything
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for a in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
              "--window-size=1400,1900", "--no-proxy-server"):
        opts.add_argument(a)
    d = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    d.set_script_timeout(10)
    try:
        yield d
    finally:
        d.quit()


def shot(d, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    d.save_screenshot(str(path))
    return path


# Read through the DOM in one script call: the page redraws every second, so element
# handles go stale between two WebDriver calls.
def text(d, css: str) -> str:
    return d.execute_script("const e = document.querySelector(arguments[0]); return e ? e.innerText : ''", css)


def count(d, css: str) -> int:
    return d.execute_script("return document.querySelectorAll(arguments[0]).length", css)


def attr(d, css: str, name: str) -> str:
    return d.execute_script(
        "const e = document.querySelector(arguments[0]); return e ? (e.getAttribute(arguments[1]) || '') : ''",
        css, name)


def click_confirmed(d, op: str) -> str:
    d.find_element(By.CSS_SELECTOR, f'#actions button[data-op="{op}"]').click()
    alert = d.switch_to.alert
    assert op in alert.text
    alert.accept()
    assert wait_for(lambda: attr(d, "#action-result", "data-status") != "", timeout=10)
    status = attr(d, "#action-result", "data-status")
    d.execute_script("document.getElementById('action-result').removeAttribute('data-status')")
    return status


def test_status_page_renders_a_live_rollout_and_acts_only_with_the_credential(procs, browser):
    d = browser
    s = Stack(procs, policy([step(5, min_duration_s=12), step(25, min_duration_s=8), step(50), step(100)],
                            trip={"window_s": 5, "min_requests": 20, "max_error_rate": 0.5}),
              shadow_args=("--disagree-rate", "0.05"), token=TOKEN)
    load = Load(s.envoy.port(), USERS, threads=3, max_seconds=110, vary_body=True)
    try:
        # the page and its assets: embedded, strict CSP, nothing from elsewhere
        with urllib.request.urlopen(s.sidecar.url + "/ui", timeout=5) as r:
            csp = r.headers["content-security-policy"]
            assert "script-src 'self'" in csp and "default-src 'none'" in csp and "frame-ancestors 'none'" in csp
        assert wait_for(lambda: s.progress().get("step") == 0, timeout=15)
        d.get(s.sidecar.url + "/ui")
        assert wait_for(lambda: d.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "1", timeout=15)
        # every section, for the live rollout at its first step
        def sections():
            return {k: count(d, k) for k in ("#checks-body tr", "#disagreements tr", "#proxies-body tr")}
        assert wait_for(lambda: min(sections().values()) >= 1 and sections()["#checks-body tr"] >= 3,
                        timeout=10), sections()
        assert text(d, "#r-name").startswith("fraud: stable → canary")
        assert count(d, "#steps li") == 4 and attr(d, "#steps li.current", "data-step") == "0"
        assert "progressing" in text(d, "#r-state")
        assert int(attr(d, "#weights-chart", "data-points")) >= 2
        assert attr(d, "#weights-chart", "data-last") == "5"
        # one chart per check, a point per interval, the threshold dashed
        assert wait_for(lambda: count(d, "#checks-charts figure") >= 3
                        and count(d, "#checks-charts svg circle") >= 2 * count(d, "#checks-charts figure"), timeout=10)
        assert count(d, "#checks-charts line.threshold") >= 1
        # the engine's exact count of the proxies' comparisons leads (the shadow answers
        # 5 % of inputs differently), the stored sample's estimate follows
        assert wait_for(lambda: "comparisons (engine" in text(d, "#shadow-summary"), timeout=10), \
            text(d, "#shadow-summary")
        agreement = float(text(d, "#shadow-summary").split()[1])
        assert 80.0 < agreement < 100.0, text(d, "#shadow-summary")
        first = text(d, "#disagreements tr")
        assert len(first.split()) >= 3  # correlation id, verdict, both predictions
        assert "local_trip check" in text(d, "#trip-state")
        assert count(d, "#history-body tr") >= 2 and count(d, "#events-list li") >= 1
        assert "started" in text(d, "#events-list")
        proxy = text(d, "#proxies-body tr")
        assert str(s.sidecar.plan()["version"]) in proxy or "s ago" in proxy
        resources = d.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
        assert resources and all(u.startswith(s.sidecar.url) for u in resources), resources
        shot(d, "1-step0")

        # read-only without a credential: no actions, and a write from the page is refused
        assert not d.find_element(By.ID, "actions").is_displayed()
        code = d.execute_async_script("""
            const done = arguments[arguments.length - 1];
            fetch('/v1/rollouts/fraud/pause', {method: 'POST', body: '{}'}).then(r => done(r.status));""")
        assert code == 401
        # a wrong credential shows the buttons, is refused, and is forgotten
        d.find_element(By.ID, "cred").send_keys("not-the-token")
        d.find_element(By.ID, "cred-set").click()
        assert d.find_element(By.ID, "actions").is_displayed()
        assert click_confirmed(d, "pause") == "401"
        assert not s.rollout().get("paused")
        assert wait_for(lambda: not d.find_element(By.ID, "actions").is_displayed(), timeout=5)

        # the chart follows the policy: step 0 -> step 1
        assert wait_for(lambda: attr(d, "#steps li.current", "data-step") == "1", timeout=30), text(d, "#r-state")
        assert wait_for(lambda: attr(d, "#weights-chart", "data-last") == "25", timeout=5)
        assert "step_advanced" in text(d, "#events-list")
        shot(d, "2-step1")

        # the operator credential: pause, resume, rollback work (each confirmed)
        d.find_element(By.ID, "cred").send_keys(TOKEN)
        d.find_element(By.ID, "cred-set").click()
        assert d.execute_script("return sessionStorage.getItem('rollout-control.credential')") == TOKEN
        assert d.execute_script("return document.cookie") == ""
        assert click_confirmed(d, "pause") == "200"
        assert s.rollout().get("paused") is True
        assert wait_for(lambda: "(paused)" in text(d, "#r-state"), timeout=5)
        shot(d, "3-paused")
        assert click_confirmed(d, "resume") == "200"
        assert not s.rollout().get("paused")
        assert click_confirmed(d, "rollback") == "200"
        r = s.rollout()
        assert {v["name"]: v["weight"] for v in r["variants"]}["canary"] == 0
        assert wait_for(lambda: attr(d, "#weights-chart", "data-last") == "0", timeout=5)
        ops = [h["op"] for h in s.history() if h["author"] == "ui"]
        assert len(ops) == 3, ops  # pause, resume, rollback, each a version by "ui"
        shot(d, "4-rolled-back")
    finally:
        load.stop()

    # cross-site writes are refused whatever they carry
    for headers in ({"origin": "http://evil.example"}, {"sec-fetch-site": "cross-site"}):
        status, _, body = s.sidecar.call("POST", "/v1/rollouts/fraud/pause", {}, headers=headers)
        assert status == 403 and "cross-site" in body["error"], (status, body)
    same = {"origin": s.sidecar.url, "sec-fetch-site": "same-origin"}
    assert s.sidecar.call("POST", "/v1/rollouts/fraud/pause", {}, headers=same)[0] == 200
