"""The standalone tab in headless Chromium: cancel a build, export one, see it, delete it.

It never skips silently: without Chromium it fails with the install line, unless
TRT_SKIP_BROWSER=1 says to skip on purpose. Screenshots go to test-artifacts/.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.e2e.browser import (attr, choose, click_button, click_radio, click_tab, element, find_binaries,
                               start_browser, text, wait_for)
from tests.faults.helpers import stop

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "test-artifacts"

pytestmark = [pytest.mark.browser,
              pytest.mark.skipif(os.environ.get("TRT_SKIP_BROWSER") == "1", reason="TRT_SKIP_BROWSER=1")]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def server(tmp_path):
    """The standalone tab in its own process, on 127.0.0.1, over a fresh folder."""
    port, root = free_port(), tmp_path / "models"
    log = open(tmp_path / "server.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "sd_unet_trt.ui.standalone", "--dir", str(root), "--port", str(port),
                             "--device", "cpu"], cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"

    def up():
        if proc.poll() is not None:
            raise AssertionError(f"the tab exited with {proc.returncode}: {(tmp_path / 'server.log').read_text()}")
        try:
            return urllib.request.urlopen(url + "config", timeout=2).status == 200
        except OSError:
            return False
    try:
        wait_for(up, 60, "the standalone tab to answer", poll=0.5)
        yield url, root
    finally:
        stop(proc)
        log.close()


@pytest.fixture
def browser(tmp_path):
    find_binaries()  # fails (not skips) with the install line when Chromium is missing
    driver = start_browser(tmp_path / "chromium-profile")
    yield driver
    driver.quit()


def engine_files(root: Path) -> list[str]:
    """Everything under the workspace except lock files, the (empty) index and the reusable ONNX."""
    found = []
    for path in root.rglob("*"):
        if path.is_file() and not path.name.endswith(".lock"):
            found.append(str(path.relative_to(root)))
    return sorted(found)


def progress_state(driver) -> tuple[str | None, int]:
    state, percent = attr(driver, "#trt_progress .trt-progress", "data-state"), \
        attr(driver, "#trt_progress .trt-progress", "data-percent")
    return state, int(percent) if percent else -1


def engine_ids(driver) -> list[str]:
    return [row.get_attribute("data-engine") for row in
            driver.find_elements("css selector", "#trt_engines tr[data-engine]")]


def test_export_watch_progress_delete_and_cancel(browser, server):
    url, root = server
    driver = browser
    ARTIFACTS.mkdir(exist_ok=True)
    for old_shot in ARTIFACTS.glob("ui_tab_*.png"):
        old_shot.unlink()
    driver.get(url)
    wait_for(lambda: attr(driver, "#trt_model .trt-model", "data-family") == "tiny", 30, "the model line")

    choose(driver, "trt_preset", "Default")
    choose(driver, "trt_backend", "onnxruntime")
    click_radio(driver, "trt_precision", "fp32")
    wait_for(lambda: "Estimate: disk" in element(driver, "#trt_estimate").text, 10, "the estimate")

    # A cancelled build leaves no row and no file.
    click_button(driver, "trt_export")
    wait_for(lambda: progress_state(driver)[0] == "running", 20, "the build to start")
    click_button(driver, "trt_cancel")
    wait_for(lambda: progress_state(driver)[0] == "cancelled", 60, "the build to stop")
    assert "nothing was written" in element(driver, "#trt_progress").text
    click_tab(driver, "Engines")
    wait_for(lambda: attr(driver, "#trt_engines .trt-engines-empty", "data-count") == "0", 10, "an empty table")
    leftovers = [f for f in engine_files(root) if f != "Unet-trt/manifest.json"]
    assert not any(".partial-" in f for f in leftovers), leftovers
    assert not [f for f in leftovers if f.startswith("Unet-trt/")], leftovers
    # The ONNX export is either absent or complete (kept for the next build), never a fragment.
    assert all(Path(f).name in ("unet.onnx", "unet.onnx.data") for f in leftovers), leftovers
    click_tab(driver, "Export")

    # Export: the bar moves through phases to 100 %; a second request meanwhile is refused.
    click_button(driver, "trt_export")
    wait_for(lambda: progress_state(driver)[0] == "running", 20, "the build to start")
    first_window = driver.current_window_handle
    driver.switch_to.new_window("tab")  # a second page (or an API client) asking for another build
    driver.get(url)
    wait_for(lambda: attr(driver, "#trt_model .trt-model", "data-family") == "tiny", 30, "the model line")
    choose(driver, "trt_backend", "onnxruntime")
    click_button(driver, "trt_export")
    wait_for(lambda: "already running" in element(driver, "#trt_export_msg").text, 10, "the refusal")
    driver.close()
    driver.switch_to.window(first_window)
    seen: dict[int, str] = {}
    deadline = time.monotonic() + 150
    while time.monotonic() < deadline:
        state, percent = progress_state(driver)
        if state == "running":
            seen.setdefault(percent, text(driver, "#trt_progress .trt-progress-label"))
            if percent >= 40 and not (ARTIFACTS / "ui_tab_building.png").exists():
                driver.save_screenshot(str(ARTIFACTS / "ui_tab_building.png"))
        if state in ("done", "failed", "cancelled"):
            break
        time.sleep(0.1)
    assert state == "done", text(driver, "#trt_progress")
    assert percent == 100
    assert len([p for p in seen if 0 < p < 100]) >= 3, seen  # the bar moved on its way, not one jump to the end
    result = wait_for(lambda: element(driver, "#trt_result .trt-result"), 10, "the result panel")
    engine_id = result.get_attribute("data-engine")
    assert "Engine vs PyTorch" in result.text and "passed" in result.text
    assert str(root / "Unet-trt") in result.text
    driver.save_screenshot(str(ARTIFACTS / "ui_tab_export_done.png"))

    click_tab(driver, "Engines")
    wait_for(lambda: engine_ids(driver) == [engine_id], 10, "the new engine row")
    row = element(driver, f'#trt_engines tr[data-engine="{engine_id}"]')
    assert row.get_attribute("data-status") == "ready" and "64-128 (opt 64)" in row.text and "onnxruntime" in row.text
    click_button(driver, "trt_which")  # it first asks about the default preset's size (64x64), which the engine serves
    wait_for(lambda: f"engine {engine_id} serves it in one run" in element(driver, "#trt_which_out").text, 10,
             "the engine serving the default preset's size")
    for elem_id in ("trt_q_width", "trt_q_height"):
        box = element(driver, f"#{elem_id} input")
        box.clear()
        box.send_keys("512")
    click_button(driver, "trt_which")
    wait_for(lambda: "no engine covers it" in element(driver, "#trt_which_out").text, 10, "no engine for 512x512")
    assert engine_id in element(driver, "#trt_which_out").text  # 512 px is outside 64-128 px: it says why
    for elem_id, value in (("trt_q_width", "128"), ("trt_q_height", "96"), ("trt_q_batch", "2")):
        box = element(driver, f"#{elem_id} input")
        box.clear()
        box.send_keys(value)
    click_button(driver, "trt_which")
    wait_for(lambda: f"engine {engine_id} serves it in one run" in element(driver, "#trt_which_out").text,
             10, "the engine serving 128x96 batch 2")
    driver.save_screenshot(str(ARTIFACTS / "ui_tab_engines.png"))
    assert (root / "Unet-trt" / f"{engine_id}.ort.onnx").is_file()

    choose(driver, "trt_engine_pick", engine_id)
    click_button(driver, "trt_delete")
    wait_for(lambda: element(driver, "#trt_confirm_delete").is_displayed(), 10, "the confirmation")
    assert engine_id in element(driver, "#trt_confirm_text").text
    click_button(driver, "trt_confirm_delete")
    wait_for(lambda: attr(driver, "#trt_engines .trt-engines-empty", "data-count") == "0", 10, "the row to go")
    assert "deleted" in element(driver, "#trt_engines_msg").text
    assert not [f for f in engine_files(root) if f.startswith("Unet-trt/") and f != "Unet-trt/manifest.json"]
