"""ns-viewer on the tiny run, in a real browser: headless Chromium (Debian ``chromium`` + ``chromium-driver``) driven by
Selenium. Checks the OSN controls and outputs are on the page and that moving a scale slider re-renders the view.

Screenshots go to the test's tmp dir and, when ``OSN_TEST_ARTIFACTS`` is set, to that folder as well.
"""

from __future__ import annotations

import io
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Callable, List, Optional, TypeVar

import numpy as np
import pytest
from PIL import Image

from conftest import command
from osn_nerfstudio.data.scene_format import read_scene

CHROMIUM_NAMES = ("chromium", "chromium-browser")
CHROMIUM_FLAGS = (
    "--headless=new",
    "--no-sandbox",  # the tests run as root
    "--disable-gpu",
    "--enable-unsafe-swiftshader",  # WebGL in software
    "--ignore-gpu-blocklist",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1280,800",
)
T = TypeVar("T")


def find_chromium() -> Optional[str]:
    return next((path for path in map(shutil.which, CHROMIUM_NAMES) if path), None)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for(what: str, check: Callable[[], Optional[T]], timeout: float, every: float = 0.25) -> T:
    """The first truthy result of ``check`` within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            print(f"{time.strftime('%X')} {what}")
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(every)


def start_viewer(config: Path, port: int, log: Path) -> subprocess.Popen:
    args = [
        command("ns-viewer"),
        "--load-config", str(config),
        "--viewer.websocket-host", "127.0.0.1",
        "--viewer.websocket-port", str(port),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    with log.open("w") as out:
        return subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)


def stop(process: subprocess.Popen) -> None:
    """Kill the viewer and everything it started (its own process group)."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=30)


def viewer_page_ready(url: str, process: subprocess.Popen, log: Path) -> Callable[[], bool]:
    def ready() -> bool:
        if process.poll() is not None:
            raise AssertionError(f"ns-viewer exited with {process.returncode}:\n{log.read_text()[-4000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                return response.status == 200
        except OSError:
            return False

    return ready


def browser(user_data_dir: str):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromedriver = shutil.which("chromedriver")
    if chromedriver is None:
        pytest.fail("chromium is installed but chromedriver is not: apt-get install chromium-driver")
    options = webdriver.ChromeOptions()
    options.binary_location = find_chromium()
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={user_data_dir}")
    return webdriver.Chrome(service=Service(chromedriver), options=options)


def labelled(driver, label: str, css: str):
    """The ``css`` element of the viewer row whose label reads ``label``."""
    from selenium.webdriver.common.by import By

    row = driver.find_element(
        By.XPATH, f"//label[normalize-space()='{label}']/ancestor::div[contains(@class,'Flex-root')][1]"
    )
    return row.find_element(By.CSS_SELECTOR, css)


OPTION_TEXTS = "return Array.from(document.querySelectorAll(\"[role='option']\")).map(o => o.textContent)"


def dropdown_options(driver, label: str) -> List[str]:
    from selenium.webdriver.common.keys import Keys

    field = labelled(driver, label, "input")
    field.click()
    options = wait_for(f"the {label} options", lambda: [t for t in driver.execute_script(OPTION_TEXTS) if t], 10)
    field.send_keys(Keys.ESCAPE)
    return options


def choose(driver, label: str, option: str) -> None:
    from selenium.webdriver.common.by import By

    labelled(driver, label, "input").click()
    xpath = f"//*[@role='option' and normalize-space()='{option}']"
    wait_for(f"option {option}", lambda: driver.find_elements(By.XPATH, xpath), 10)[0].click()


def view_image(driver) -> np.ndarray:
    """The rendered 3D view (the page's screenshot cropped to the canvas of the scene)."""
    from selenium.webdriver.common.by import By

    # the scene's canvas is the narrower one (the control panel takes the right of the page)
    canvas = min(
        (c for c in driver.find_elements(By.TAG_NAME, "canvas") if c.size["width"] > 0), key=lambda c: c.size["width"]
    )
    page = Image.open(io.BytesIO(driver.get_screenshot_as_png())).convert("RGB")
    ratio = page.width / driver.execute_script("return window.innerWidth")
    box = [round(v * ratio) for v in (canvas.location["x"], canvas.location["y"])]
    box += [box[0] + round(canvas.size["width"] * ratio), box[1] + round(canvas.size["height"] * ratio)]
    return np.asarray(page.crop(box), dtype=np.float32)


def settled_view(driver, timeout: float = 40.0) -> np.ndarray:
    """The view once two screenshots a second apart agree (the viewer has sent its final, full-resolution frame)."""
    deadline = time.monotonic() + timeout
    previous = view_image(driver)
    while time.monotonic() < deadline:
        time.sleep(1.0)
        current = view_image(driver)
        if np.abs(current - previous).mean() < 0.05:
            return current
        previous = current
    raise AssertionError(f"the view kept changing for {timeout:.0f} s")


def save_artifact(driver, path: Path) -> None:
    driver.save_screenshot(str(path))
    if os.environ.get("OSN_TEST_ARTIFACTS"):
        folder = Path(os.environ["OSN_TEST_ARTIFACTS"])
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, folder / path.name)


def test_viewer_page_has_osn_controls_and_a_slider_rerenders(tiny_run: Path, tiny_scene: Path, tmp_path: Path):
    if find_chromium() is None:
        pytest.skip("no chromium binary on PATH (Debian: apt-get install chromium chromium-driver)")
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    foreground = [obj.name for obj in read_scene(tiny_scene).objects[1:]]
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    log = tmp_path / "ns-viewer.log"
    viewer = start_viewer(tiny_run / "config.yml", port, log)
    driver = None
    try:
        wait_for("ns-viewer to serve its page", viewer_page_ready(url, viewer, log), timeout=90)
        driver = browser(tempfile.mkdtemp(dir=tmp_path))
        driver.get(url)
        wait_for(
            "the OSN controls", lambda: driver.find_elements(By.XPATH, "//label[normalize-space()='OSN score']"), 60
        )

        sliders = {name: labelled(driver, f"{name} scale", "[role='slider']") for name in foreground}
        assert driver.find_elements(By.XPATH, "//button[normalize-space()='Sample valid configuration']")
        assert driver.find_elements(By.XPATH, "//button[normalize-space()='Closest to ground truth']")
        output_type = labelled(driver, "Output type", "input")
        # the viewer lists the outputs once the first image has been rendered
        wait_for("the first render", lambda: output_type.get_attribute("value") != "not set", 60)
        outputs = dropdown_options(driver, "Output type")
        assert {"rgb", "depth", "accumulation", "segmentation"} <= set(outputs), outputs
        assert {f"{kind}_{name}" for name in foreground for kind in ("rgb", "depth")} <= set(outputs), outputs
        assert not {"object_weights", "alone_rgb", "scales"} & set(outputs), "per-object stacks do not render"

        # small renders keep the CPU quick; depth shows a scale change from any viewpoint (colour changes only
        # at occlusions when seen from a frame of the video)
        labelled(driver, "Max res", "[role='slider']").send_keys(Keys.HOME)
        choose(driver, "Output type", "depth")
        readout = labelled(driver, "Exact validity", "input")
        before_text = wait_for("the validity read-out", lambda: readout.get_attribute("value"), 30)
        before = settled_view(driver)
        save_artifact(driver, tmp_path / "viewer-before.png")

        slider = sliders[foreground[0]]
        value = float(slider.get_attribute("aria-valuenow"))
        driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", slider)
        slider.send_keys(Keys.END if value < 0.5 * float(slider.get_attribute("aria-valuemax")) else Keys.HOME)
        wait_for("the slider to move", lambda: float(slider.get_attribute("aria-valuenow")) != value, 10)
        wait_for("the read-out to follow", lambda: readout.get_attribute("value") != before_text, 30)
        after = settled_view(driver)
        save_artifact(driver, tmp_path / "viewer-after.png")
        difference = np.abs(after - before).mean()
        assert difference > 1.0, (
            f"moving the {foreground[0]} slider left the view unchanged (mean difference {difference:.3f})"
        )

        # the sample button moves the sliders
        values = [slider.get_attribute("aria-valuenow") for slider in sliders.values()]
        driver.find_element(By.XPATH, "//button[normalize-space()='Sample valid configuration']").click()
        wait_for(
            "the sliders to move", lambda: [s.get_attribute("aria-valuenow") for s in sliders.values()] != values, 15
        )
        settled_view(driver)
        save_artifact(driver, tmp_path / "viewer-sampled.png")
    finally:
        if driver is not None:
            driver.quit()
        stop(viewer)
