"""Headless Chromium through Selenium, and small waits for a Gradio page."""
from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Callable, TypeVar

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webelement import WebElement

T = TypeVar("T")
FLAGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--window-size=1400,1800"]


class BrowserMissing(RuntimeError):
    """Chromium or its driver is not installed; the message says how to install them."""


def find_binaries() -> tuple[str, str]:
    chromium = os.environ.get("CHROMIUM_BIN") or shutil.which("chromium") or shutil.which("chromium-browser")
    driver = os.environ.get("CHROMEDRIVER") or shutil.which("chromedriver")
    if not chromium or not driver or not Path(chromium).is_file() or not Path(driver).is_file():
        raise BrowserMissing("headless Chromium is needed: apt-get install -y chromium chromium-driver "
                             "(or set CHROMIUM_BIN and CHROMEDRIVER); set TRT_SKIP_BROWSER=1 to skip on purpose")
    return chromium, driver


def start_browser(profile_dir: Path) -> webdriver.Chrome:
    chromium, driver = find_binaries()
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in FLAGS + [f"--user-data-dir={profile_dir}"]:
        options.add_argument(flag)
    return webdriver.Chrome(options=options, service=Service(executable_path=driver))


def wait_for(check: Callable[[], T], timeout: float, what: str, poll: float = 0.1) -> T:
    """The first truthy value of check(); exceptions while the page settles count as not yet."""
    deadline, last_error = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        try:
            value = check()
            if value:
                return value
        except Exception as e:  # noqa: BLE001 - elements come and go while Gradio re-renders
            last_error = e
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}"
                         + (f" (last error: {last_error})" if last_error else ""))


def element(driver: webdriver.Chrome, css: str) -> WebElement:
    return driver.find_element(By.CSS_SELECTOR, css)


def attr(driver: webdriver.Chrome, css: str, name: str) -> str | None:
    """An attribute of the first match, or None; retried while Gradio swaps the element out."""
    for _ in range(20):
        try:
            found = driver.find_elements(By.CSS_SELECTOR, css)
            return found[0].get_attribute(name) if found else None
        except StaleElementReferenceException:
            time.sleep(0.05)
    raise AssertionError(f"{css} kept being replaced while reading {name}")


def text(driver: webdriver.Chrome, css: str) -> str:
    """The text of the first match ('' when absent); retried while Gradio swaps the element out."""
    for _ in range(20):
        try:
            found = driver.find_elements(By.CSS_SELECTOR, css)
            return found[0].text if found else ""
        except StaleElementReferenceException:
            time.sleep(0.05)
    raise AssertionError(f"{css} kept being replaced while reading its text")


def choose(driver: webdriver.Chrome, elem_id: str, option_text: str) -> None:
    """Pick an option of a Gradio 3 dropdown the way a user does: open it, click the option."""
    box = element(driver, f"#{elem_id} input")
    box.click()

    def option():
        for item in driver.find_elements(By.CSS_SELECTOR, f"#{elem_id} ul.options li"):
            if (item.get_attribute("data-value") or "").startswith(option_text):
                return item
        return None
    wait_for(option, 10, f"option {option_text!r} in #{elem_id}").click()
    wait_for(lambda: element(driver, f"#{elem_id} input").get_attribute("value").startswith(option_text),
             10, f"#{elem_id} to show {option_text!r}")


def click_radio(driver: webdriver.Chrome, elem_id: str, label: str) -> None:
    for item in driver.find_elements(By.CSS_SELECTOR, f"#{elem_id} label"):
        if item.text.strip() == label:
            item.click()
            return
    raise AssertionError(f"no radio option {label!r} in #{elem_id}")


def click_button(driver: webdriver.Chrome, elem_id: str) -> None:
    element(driver, f"#{elem_id}").click()


def click_tab(driver: webdriver.Chrome, name: str) -> None:
    for button in driver.find_elements(By.CSS_SELECTOR, ".tab-nav button"):
        if button.text.strip() == name:
            button.click()
            return
    raise AssertionError(f"no tab {name!r}")
