"""The web demo in a real browser: headless Chromium, driven by Selenium, against ``python demo.py``
served in a subprocess on a free port. Skipped, with the reason, where Chromium, its driver,
selenium or gradio are missing (``pip install -r requirements-demo.txt``; Debian: ``apt-get install
chromium chromium-driver``).

    python tests/test_demo_browser.py docs/images/demo.png      # the README's screenshot of the page
"""
from __future__ import annotations

import importlib.util
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = next(filter(None, map(shutil.which, ("chromium", "chromium-browser"))), None)
CHROMEDRIVER = shutil.which("chromedriver")
MISSING = [what for what, ok in (("chromium", CHROMIUM), ("chromedriver", CHROMEDRIVER),
                                 ("selenium", importlib.util.find_spec("selenium")),
                                 ("gradio", importlib.util.find_spec("gradio"))) if not ok]
pytestmark = pytest.mark.skipif(bool(MISSING), reason=f"the browser test needs {', '.join(MISSING)} "
                                "(pip install -r requirements-demo.txt; apt-get install chromium chromium-driver)")
#: as root in a container, on a closed network (without the background-networking flags it refuses to connect)
CHROMIUM_FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
                  "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync")
VIEWPORT = (1280, 1100)
UPLOAD_MB = 1


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_demo(log_path: Path, *args: str, timeout: float = 120.0) -> tuple[subprocess.Popen, str]:
    """``python demo.py demo.port=<free> *args`` in the background, once its page answers; (process, url)."""
    port = free_port()
    log = open(log_path, "w")
    proc = subprocess.Popen([sys.executable, "demo.py", f"demo.port={port}", *args], cwd=ROOT, stdout=log,
                            stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"demo.py exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as page:
                if page.status == 200:
                    return proc, url
        except OSError:
            time.sleep(0.5)
    stop_demo(proc)
    raise RuntimeError(f"demo.py did not serve {url} within {timeout:.0f} s:\n{log_path.read_text()[-3000:]}")


def stop_demo(proc: subprocess.Popen) -> int:
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()


def open_browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={tempfile.mkdtemp(prefix='lgfa-chromium-')}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {"width": VIEWPORT[0], "height": VIEWPORT[1],
                                                                  "deviceScaleFactor": 1, "mobile": False})
    return driver


def wait_for(driver, condition, timeout: float = 90.0, what: str = "the page"):
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.2, ignored_exceptions=(StaleElementReferenceException,)
                         ).until(condition, f"waiting for {what}")


def first(driver, css: str):
    """The first element ``css`` selects now, or None."""
    from selenium.webdriver.common.by import By

    found = driver.find_elements(By.CSS_SELECTOR, css)
    return found[0] if found else None


def element(driver, css: str, timeout: float = 30.0):
    return wait_for(driver, lambda d: first(d, css), timeout, css)


def status(driver) -> str:
    line = first(driver, "#status")
    return line.text if line is not None else ""


def video_source(driver) -> str | None:
    video = first(driver, "#video video")
    return video.get_attribute("src") if video is not None else None


def type_into(driver, css: str, text: str) -> None:
    from selenium.webdriver.common.keys import Keys

    box = element(driver, css)
    box.send_keys(Keys.CONTROL, "a")
    box.send_keys(Keys.DELETE)
    box.send_keys(text, Keys.TAB)  # the tab commits a slider's number box


def choose_source(driver, label: str) -> None:
    from selenium.webdriver.common.by import By

    element(driver, "#source")
    wait_for(driver, lambda d: [e for e in d.find_elements(By.CSS_SELECTOR, "#source label") if e.text == label],
             30, f"the face choice '{label}'")[0].click()


def animate(driver, url: str, prompt: str, frames: int, sequence: str = "") -> str:
    """Load the page, ask for ``prompt`` (then ``sequence``) at ``frames`` frames, wait until the video has a
    source and the strip image has loaded; returns the status line."""
    driver.get(url)
    wait_for(driver, lambda d: status(d) == "" and first(d, "#face img"), 60, "the input face")
    type_into(driver, "#prompt textarea", prompt)
    if sequence:
        type_into(driver, "#sequence textarea", sequence)
    type_into(driver, "#frames input[type=number]", str(frames))
    element(driver, "#run").click()
    wait_for(driver, video_source, 120, "the video's source")
    wait_for(driver, lambda d: d.execute_script("const i = document.querySelector('#strip img');"
                                                "return i !== null && i.complete && i.naturalWidth > 0;"),
             30, "the strip image")
    return status(driver)


@pytest.fixture(scope="module")
def demo_url(tmp_path_factory):
    proc, url = start_demo(tmp_path_factory.mktemp("demo") / "demo.log", f"demo.max_upload_mb={UPLOAD_MB}")
    yield url
    assert stop_demo(proc) == 0  # SIGTERM stops it as Ctrl-C does, its temporary outputs removed


@pytest.fixture(scope="module")
def driver(demo_url):
    browser = open_browser()
    yield browser
    browser.quit()


def test_page_animates_a_prompt(driver, demo_url):
    from selenium.webdriver.common.by import By

    line = animate(driver, demo_url, "The person is winking.", frames=4)
    assert line.startswith("4 frames of The person is winking. in ")
    assert video_source(driver).startswith(demo_url)
    wait_for(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "#clip-plot canvas, #clip-plot svg"), 30, "the plot")


def test_bad_upload_shows_its_error_and_the_server_keeps_serving(driver, demo_url, tmp_path):
    (tmp_path / "notes.txt").write_text("not a face")
    driver.get(demo_url)
    choose_source(driver, "an image")
    wait_for(driver, lambda d: status(d).startswith("Upload a face image"), 30, "the upload hint")
    element(driver, "#image-upload input[type=file]").send_keys(str(tmp_path / "notes.txt"))
    wait_for(driver, lambda d: "notes.txt is not an image: upload one of .jpg" in status(d), 30, "the error")
    element(driver, "#run").click()  # the refused file was cleared: the page asks for an image again
    wait_for(driver, lambda d: "Upload a face image first" in status(d), 30, "the next answer")


def test_upload_over_the_limit_is_refused(driver, demo_url, tmp_path):
    (tmp_path / "big.png").write_bytes(b"\x89PNG" + bytes(UPLOAD_MB * 2**20 + 1))
    driver.get(demo_url)
    choose_source(driver, "an image")
    element(driver, "#image-upload input[type=file]").send_keys(str(tmp_path / "big.png"))
    wait_for(driver, lambda d: "exceed the maximum allowed size" in d.find_element("tag name", "body").text,
             30, "the size error")
    request = urllib.request.Request(demo_url + "gradio_api/upload", method="POST",
                                     data=b"--x\r\nContent-Disposition: form-data; name=\"files\"; filename=\"b.png\""
                                          b"\r\n\r\n" + bytes(UPLOAD_MB * 2**20 + 1) + b"\r\n--x--\r\n",
                                     headers={"Content-Type": "multipart/form-data; boundary=x"})
    with pytest.raises(urllib.error.HTTPError, match="413"):
        urllib.request.urlopen(request, timeout=30)


def screenshot(path: Path) -> None:
    """The page after a run, as the README shows it."""
    proc, url = start_demo(Path(tempfile.mkdtemp()) / "demo.log")
    try:
        driver = open_browser()
        try:
            animate(driver, url, "The person is smiling.", frames=2)  # the first render warms the pipeline up
            print(animate(driver, url, "The person is smiling.", frames=8, sequence="closing eyes"))
            time.sleep(2)  # the plots' drawing, the video's first frames
            bottom = driver.execute_script("return Math.max(...['#status', '#clip-plot'].map("
                                           "s => document.querySelector(s).getBoundingClientRect().bottom));")
            driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {
                "width": VIEWPORT[0], "height": min(VIEWPORT[1], int(bottom) + 24), "deviceScaleFactor": 1,
                "mobile": False})
            driver.execute_script("window.scrollTo(0, 0);")
            time.sleep(1)
            driver.save_screenshot(str(path))
        finally:
            driver.quit()
    finally:
        stop_demo(proc)


if __name__ == "__main__":
    if MISSING:
        sys.exit(f"needs {', '.join(MISSING)}")
    screenshot(Path(sys.argv[1] if len(sys.argv) > 1 else "demo.png"))
