"""The chat page at `/` in a real headless Chromium (Debian's `chromium` + `chromium-driver`,
driven with selenium): upload a shipped image, ask, read the streamed answer from the page, and
compare it with `autoneural run`. A screenshot goes to target/web-page.png.

Skipped when Chromium is not installed, unless AUTONEURAL_REQUIRE_BROWSER=1 (CI sets it).
"""
import json
import os
import pathlib
import shutil
import subprocess

import pytest

from test_server import BIN, IMAGE, MODEL, QUESTION, ROOT, Server

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
REQUIRED = os.environ.get("AUTONEURAL_REQUIRE_BROWSER") == "1"

pytestmark = pytest.mark.skipif(
    not REQUIRED and not (CHROMIUM and DRIVER),
    reason="Chromium and chromedriver are not installed (apt-get install chromium chromium-driver)")


@pytest.fixture(scope="module")
def page_server():
    s = Server("--model", str(MODEL))
    yield s
    s.stop()


def test_page_uploads_an_image_and_streams_the_answer(page_server):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    assert CHROMIUM and DRIVER, "Chromium and chromedriver are required here"
    expected = json.loads(subprocess.run(
        [BIN, "run", "--model", str(MODEL), "--image", str(IMAGE), "--prompt", QUESTION, "--json"],
        check=True, capture_output=True, text=True).stdout)["text"]

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for a in ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1000,700"]:
        opts.add_argument(a)
    driver = webdriver.Chrome(service=Service(DRIVER), options=opts)
    try:
        driver.get(page_server.base + "/")
        WebDriverWait(driver, 20).until(
            lambda d: d.find_element(By.ID, "model").text == "autoneural-cockpit-tiny")
        driver.find_element(By.ID, "file").send_keys(str(IMAGE))
        WebDriverWait(driver, 10).until(
            lambda d: "has" in d.find_element(By.ID, "drop").get_attribute("class"))
        driver.find_element(By.ID, "prompt").send_keys(QUESTION)
        driver.find_element(By.ID, "send").click()
        done = WebDriverWait(driver, 60).until(
            lambda d: d.find_elements(By.CSS_SELECTOR, ".msg.assistant[data-done='1']"))
        answer = done[-1].text
        out = ROOT / "target" / "web-page.png"
        out.parent.mkdir(exist_ok=True)
        driver.save_screenshot(str(out))
        assert answer == expected
        # The user's bubble shows the uploaded image.
        assert driver.find_elements(By.CSS_SELECTOR, ".msg.user img")
        # A second turn keeps the conversation.
        driver.find_element(By.ID, "prompt").send_keys("Is it safe to go?")
        driver.find_element(By.ID, "send").click()
        WebDriverWait(driver, 60).until(
            lambda d: len(d.find_elements(By.CSS_SELECTOR, ".msg.assistant[data-done='1']")) == 2)
    finally:
        driver.quit()
