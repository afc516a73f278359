"""The console in headless Chromium on a real bundle: the sign-in form without the key, every
section with it (units, GPUs, their modes over time, plans, usage by key, the audit log), a GPU
switch shown as it happens; a screenshot is kept (tests/artifacts/console.png)."""
from __future__ import annotations

import threading
from pathlib import Path

import pytest
import yaml

from cdp import CHROMIUM, Browser
from helpers import HTTP, wait_for
from test_gpu_modes import _rig, _transcribe

pytestmark = [pytest.mark.slow, pytest.mark.skipif(CHROMIUM is None, reason="no chromium: runtime/setup.sh")]
OPERATOR = "console-operator-key-0123456789"
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"


@pytest.fixture
def browser(tmp_path):
    b = Browser(tmp_path)
    yield b
    b.close()


def _text(browser) -> str:
    return browser.evaluate("document.body.innerText") or ""


def test_the_console_signs_in_shows_the_rig_and_a_switch_as_it_happens(tmp_path, models, wav, bundle_factory,
                                                                        browser):
    (tmp_path / "operator").write_text(OPERATOR)
    rig = _rig(tmp_path, models)
    data = yaml.safe_load(rig.read_text())
    data.setdefault("api", {}).setdefault("keys", {})["operator_file"] = str(tmp_path / "operator")
    rig.write_text(yaml.safe_dump(data))
    b = bundle_factory(rig)
    b.key = OPERATOR
    b.wait_ready()
    HTTP.post(b.api + "/v1/completions", headers={"Authorization": f"Bearer {OPERATOR}"},
              json={"model": "worker", "prompt": "hi", "max_tokens": 2}, timeout=60)  # some usage to chart

    browser.open(b.api + "/console")  # no cookie: the sign-in form, and no data
    wait_for(lambda: "Operator key" in _text(browser) and "Units" not in _text(browser), 20, "the sign-in form")
    assert HTTP.get(b.api + "/admin/units", timeout=10).status_code == 401

    browser.evaluate("document.querySelector('input[name=key]').value = 'wrong-key-0123456789';"
                     "document.querySelector('form').submit()")  # a wrong key: still the form
    wait_for(lambda: "Not signed in" in _text(browser), 20, "the wrong key refused")
    browser.evaluate(f"document.querySelector('input[name=key]').value = '{OPERATOR}';"
                     "document.querySelector('form').submit()")
    wait_for(lambda: "brain" in _text(browser) and "worker" in _text(browser), 20, "the units shown")
    shown = _text(browser)
    for part in ("GPU modes over the last 10 minutes", "Tokens by key, per day", "Audit log, latest", "Plans"):
        assert part in shown, part
    assert "operator" in browser.evaluate("document.getElementById('usage-keys').innerText")

    mode = "document.querySelector('.gpu-mode[data-gpu=\"2\"]').textContent"
    assert browser.evaluate(mode) == "llm"
    seen: set[str] = set()
    done = threading.Event()

    def watch():
        while not done.is_set():
            seen.add(browser.evaluate(mode) or "")
            done.wait(0.2)
    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        assert _transcribe(b, wav).status_code == 200  # GPU 2 goes to Whisper
        wait_for(lambda: "script" in seen, 20, "the console showing GPU 2 in script mode")
    finally:
        done.set()
        watcher.join(10)
    ARTIFACTS.mkdir(exist_ok=True)
    browser.screenshot(ARTIFACTS / "console.png")
    assert (ARTIFACTS / "console.png").stat().st_size > 10_000
    rects = browser.evaluate("document.querySelectorAll('#timeline rect').length")
    assert rects >= 6  # five GPUs, and GPU 2's change
