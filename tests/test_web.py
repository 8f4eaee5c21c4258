"""The page ``unio demo --web`` and ``unio serve`` show at ``/``: its routes in-process, then the page
in a real headless browser: Debian's chromium driven by selenium through chromedriver
(``apt-get install chromium chromium-driver``; nothing is downloaded: both are named by path, and
selenium's driver manager is kept offline). The browser tests skip, saying why, without them.

``unio demo --web`` runs as a subprocess on a free loopback port with the shipped shapes-demo
model. The test uploads a shapes image and checks what the page draws for detect (boxes in the
list and on the canvas, in their colours), segment (the mask decoded in the browser has the
record's area), depth and text-to-image, and that a file that is no image and one with too many
pixels show the server's own error message. Screenshots go to ``tests/.screenshots/`` (or
``$UNIO_SCREENSHOTS``) for people to look at.
"""
import asyncio
import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from importlib import resources

from PIL import Image

import unio
from unio.cli.main import main as cli
from unio.data.shapes import ShapesWorld

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")

from unio.serving import create_app  # noqa: E402  (after the skips: needs the web stack)
from conftest import stop  # noqa: E402

try:
    from selenium import webdriver
    from selenium.common.exceptions import TimeoutException, WebDriverException
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait
except ImportError:  # the browser tests skip
    webdriver = None

INSTALL = "apt-get install chromium chromium-driver"
SHOTS = Path(os.environ.get("UNIO_SCREENSHOTS") or Path(__file__).parent / ".screenshots")
WAIT = 60          # seconds any one step of the page may take


def _find(env: str, *names: str) -> str | None:
    """The program ``$env`` names (None if it names no file), else the first of ``names`` on PATH."""
    if os.environ.get(env):
        return os.environ[env] if Path(os.environ[env]).is_file() else None
    for name in names:
        found = shutil.which(name)
        if found:
            return found
    return None


CHROMIUM = _find("UNIO_CHROMIUM", "chromium", "chromium-browser")
CHROMEDRIVER = _find("UNIO_CHROMEDRIVER", "chromedriver")
needs_browser = pytest.mark.skipif(
    webdriver is None or not (CHROMIUM and CHROMEDRIVER),
    reason=f"the page's browser test needs selenium (pip install -e '.[dev]') and Debian's chromium and "
           f"chromedriver ({INSTALL}); found selenium={webdriver is not None}, chromium={CHROMIUM}, "
           f"chromedriver={CHROMEDRIVER}")


# ---------------------------------------------------------------------- the routes, in-process
def get_all(app, paths, headers=None):
    async def main():
        try:
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://unio") as c:
                return [await c.get(p, headers=headers) for p in paths]
        finally:
            await app.state.batcher.stop()
    return asyncio.run(main())


def test_the_page_is_package_data_and_loads_nothing_from_elsewhere():
    web = resources.files("unio.serving").joinpath("web")
    for name in ("index.html", "app.js", "app.css"):
        text = web.joinpath(name).read_text(encoding="utf-8")
        assert not re.search(r"(https?:)?//[\w.-]+\.\w+/", text.replace("http://127.0.0.1", "")), name  # no CDN
    html = web.joinpath("index.html").read_text(encoding="utf-8")
    assert 'src="ui/app.js"' in html and 'href="ui/app.css"' in html and 'role="alert"' in html


def test_the_page_its_samples_and_the_token(micro_export):
    pipe = unio.load(micro_export)
    page, js, css, samples, nope, redirect, tasks = get_all(
        create_app(pipe, token="s3cret"), ["/", "/ui/app.js", "/ui/app.css", "/ui/samples", "/ui/nope", "/ui", "/v1/tasks"])
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html") and "<select id=\"task\"" in page.text
    assert js.status_code == 200 and "javascript" in js.headers["content-type"]
    assert css.status_code == 200 and css.headers["content-type"].startswith("text/css")
    assert nope.status_code == 404 and "the page is at /" in nope.json()["error"]
    assert redirect.status_code == 307 and redirect.headers["location"] == "/"
    assert tasks.status_code == 401            # the page is open, the model is not
    listed = samples.json()["samples"]
    assert len(listed) == 6 and listed[0]["image"].startswith("data:image/png;base64,")
    assert set(listed[0]["inputs"]) == {"question", "expression", "box", "text"} and len(listed[0]["inputs"]["box"]) == 4
    assert samples.json() == json.loads(json.dumps({"seed": 1000, "samples": listed}))
    (tasks,) = get_all(create_app(pipe, token="s3cret"), ["/v1/tasks"], {"Authorization": "Bearer s3cret"})
    described = {t["name"]: t for t in tasks.json()["tasks"]}
    assert described["detect"]["task_options"] == ["max_objects", "top_p", "temperature", "threshold"]
    assert described["ground"]["prompt"] == pipe.ctx.prompts.canonical("ground")


def test_demo_web_refuses_a_public_host_without_a_token(monkeypatch, capsys):
    monkeypatch.delenv("UNIO_SERVE_TOKEN", raising=False)
    assert cli(["demo", "--web", "--host", "0.0.0.0", "--port", "1"]) == 2
    err = capsys.readouterr().err
    assert "--token" in err and "Traceback" not in err


# ---------------------------------------------------------------------- the page, in a browser


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server():
    """``unio demo --web`` on a free port: (its URL, the line it printed). Its output is read by a
    thread (so the pipe never fills), and every wait is bounded."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "unio", "demo", "--web", "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    printed = []
    reader = threading.Thread(target=lambda: printed.extend(proc.stdout), daemon=True)
    reader.start()
    url, deadline = f"http://127.0.0.1:{port}/", time.monotonic() + 120
    try:
        with httpx.Client(timeout=10) as client:
            while True:   # the printed address, then /ready
                assert proc.poll() is None, "unio demo --web exited:\n" + "".join(printed)
                assert time.monotonic() < deadline, "unio demo --web was not ready in 120 s:\n" + "".join(printed)
                line = next((ln for ln in list(printed) if ln.startswith("unio demo: open ")), None)
                try:
                    if line and client.get(url + "ready").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                time.sleep(0.2)
        yield url, line
    finally:
        stop(proc)
        reader.join(timeout=10)


@pytest.fixture(scope="module")
def browser(monkeypatch_module):
    """Headless chromium through chromedriver, both from the system (nothing downloaded)."""
    monkeypatch_module.setenv("SE_OFFLINE", "true")      # selenium's driver manager never goes online
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1280,1100", "--hide-scrollbars", "--disable-extensions"):
        options.add_argument(arg)
    try:
        driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    except WebDriverException as exc:
        pytest.skip(f"chromium did not start through {CHROMEDRIVER} ({exc.msg}); {INSTALL}")
    driver.set_page_load_timeout(WAIT)
    SHOTS.mkdir(parents=True, exist_ok=True)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def monkeypatch_module():
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A shapes image (a seed the samples do not use), a text file, and a picture with too many pixels."""
    folder = tmp_path_factory.mktemp("web")
    sample = ShapesWorld(seed=4242)[3]
    sample["image"].save(folder / "shapes.png")
    (folder / "notes.txt").write_text("this is not a picture\n")
    Image.new("RGB", (4100, 4100), (30, 90, 160)).save(folder / "huge.png")
    return {"shapes": folder / "shapes.png", "text": folder / "notes.txt", "huge": folder / "huge.png",
            "objects": sample["objects"]}


def shot(driver, name: str, request) -> Path:
    """A screenshot of the whole page (not only the window) in SHOTS; its path is printed (also
    under ``pytest -q``, which captures the tests' own output)."""
    path = SHOTS / f"{name}.png"
    driver.execute_script("window.scrollTo(0, 0)")
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(1280, max(900, min(int(height) + 120, 4000)))
    driver.save_screenshot(str(path))
    driver.set_window_size(1280, 1100)
    capture = request.config.pluginmanager.getplugin("capturemanager")
    with capture.global_and_fixture_disabled() if capture is not None else contextlib.nullcontext():
        print(f"\nscreenshot: {path}", flush=True)
    return path


def wait_state(driver, *states: str) -> str:
    """Wait until the page's ``body[data-state]`` is one of ``states``; return it."""
    try:
        WebDriverWait(driver, WAIT).until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-state") in states)
    except TimeoutException:
        raise AssertionError(f"the page did not reach {states}: status "
                             f"{driver.find_element(By.ID, 'status').text!r}, error {driver.find_element(By.ID, 'error').text!r}")
    return driver.find_element(By.TAG_NAME, "body").get_attribute("data-state")


def open_page(driver, url: str) -> None:
    driver.get(url)
    assert wait_state(driver, "idle", "error") == "idle", driver.find_element(By.ID, "error").text


def choose(driver, task: str, image: Path | None = None) -> None:
    Select(driver.find_element(By.ID, "task")).select_by_value(task)
    if image is not None:
        driver.find_element(By.ID, "file").send_keys(str(image))
        WebDriverWait(driver, WAIT).until(lambda d: d.find_element(By.ID, "view").get_attribute("data-drawn") == "image"
                                          or "cannot show" in d.find_element(By.ID, "view-caption").text)


def run(driver, task: str) -> str:
    driver.find_element(By.ID, "run").click()
    WebDriverWait(driver, WAIT).until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-state") != "busy")
    return wait_state(driver, "done", "error")


def pixel(driver, canvas: str, x: float, y: float) -> list[int]:
    return driver.execute_script("const c = document.getElementById(arguments[0]);"
                                 "return Array.from(c.getContext('2d').getImageData(arguments[1], arguments[2], 1, 1).data);",
                                 canvas, int(x), int(y))


def colours(driver, canvas: str) -> int:
    """How many distinct colours the canvas holds (1: blank)."""
    return driver.execute_script(
        "const c = document.getElementById(arguments[0]); const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;"
        "const s = new Set(); for (let i = 0; i < d.length; i += 4) s.add((d[i] << 16) | (d[i + 1] << 8) | d[i + 2]);"
        "return s.size;", canvas)


def hex_rgb(colour: str) -> list[int]:
    return [int(colour[i:i + 2], 16) for i in (1, 3, 5)]


@needs_browser
def test_the_page_loads_with_the_models_tasks(server, browser, request):
    url, printed = server
    assert printed.strip().startswith(f"unio demo: open {url} in a browser")
    open_page(browser, url)
    tasks = [o.get_attribute("value") for o in Select(browser.find_element(By.ID, "task")).options]
    assert {"caption", "vqa", "detect", "ground", "segment", "depth", "generate_image", "inpaint"} <= set(tasks)
    assert Select(browser.find_element(By.ID, "task")).first_selected_option.get_attribute("value") == "detect"
    WebDriverWait(browser, WAIT).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#samples button")) > 0)
    # every form field has a label
    for field in browser.find_elements(By.CSS_SELECTOR, "form input, form select"):
        fid = field.get_attribute("id")
        assert fid and browser.find_elements(By.CSS_SELECTOR, f"label[for='{fid}']"), f"field {fid!r} has no label"
    Select(browser.find_element(By.ID, "task")).select_by_value("vqa")
    assert browser.find_element(By.ID, "input-question").is_displayed()
    Select(browser.find_element(By.ID, "task")).select_by_value("generate_image")
    assert not browser.find_element(By.ID, "image-fields").is_displayed()
    assert browser.find_element(By.ID, "option-candidates").get_attribute("type") == "number"
    shot(browser, "page", request)


@needs_browser
def test_detection_on_an_uploaded_image_is_drawn(server, browser, files, request):
    url, _ = server
    open_page(browser, url)
    choose(browser, "detect", files["shapes"])
    assert run(browser, "detect") == "done", browser.find_element(By.ID, "error").text
    items = browser.find_elements(By.CSS_SELECTOR, "#results li")
    assert items, "no detections listed"
    record = browser.execute_script("return JSON.parse(document.getElementById('record').textContent)")
    assert record["task"] == "detect" and record["image"] == "shapes.png" and len(record["boxes"]) >= len(items)
    labels = [li.get_attribute("data-label") for li in items]
    scores = [float(li.get_attribute("data-score")) for li in items]
    assert scores == sorted(scores, reverse=True) and all(s >= 0.3 for s in scores)
    assert all(re.fullmatch(r"(small|medium|large) \w+ \w+", lb) for lb in labels), labels
    assert items[0].text.startswith(f"{labels[0]} {scores[0]:.2f}")
    truth = sorted(o["label"] for o in files["objects"])
    assert sorted(labels) == truth, (labels, truth)        # shapes-demo finds this picture's objects
    view = browser.find_element(By.ID, "view")
    assert view.get_attribute("data-boxes") == str(len(items)) and view.get_attribute("data-drawn") == "detect"
    assert colours(browser, "view") > 20
    # the top box is drawn last, in its list colour, along its left edge
    width = int(view.get_attribute("width"))
    scale = width / record["width"]
    x1, y1, x2, y2 = (float(v) for v in items[0].get_attribute("data-box").split(","))
    assert pixel(browser, "view", round(x1 * scale), (y1 + y2) / 2 * scale)[:3] == hex_rgb(items[0].get_attribute("data-color"))
    shot(browser, "detect", request)


@needs_browser
def test_segment_depth_and_a_generated_picture(server, browser, files, request):
    url, _ = server
    open_page(browser, url)
    # a sample fills the inputs with values to try on it
    browser.find_element(By.CSS_SELECTOR, "#samples button[data-sample='1']").click()
    Select(browser.find_element(By.ID, "task")).select_by_value("segment")
    WebDriverWait(browser, WAIT).until(lambda d: d.find_element(By.ID, "input-expression").get_attribute("value"))
    assert run(browser, "segment") == "done", browser.find_element(By.ID, "error").text
    record = browser.execute_script("return JSON.parse(document.getElementById('record').textContent)")
    assert record["area"] > 0
    assert int(browser.find_element(By.ID, "view").get_attribute("data-mask-area")) == record["area"]  # RLE read right
    shot(browser, "segment", request)

    Select(browser.find_element(By.ID, "task")).select_by_value("depth")
    assert run(browser, "depth") == "done", browser.find_element(By.ID, "error").text
    assert browser.find_element(By.ID, "side").get_attribute("data-drawn") == "depth" and colours(browser, "side") > 10
    shot(browser, "depth", request)

    Select(browser.find_element(By.ID, "task")).select_by_value("generate_image")
    browser.find_element(By.ID, "input-text").clear()
    browser.find_element(By.ID, "input-text").send_keys("a large red circle")
    browser.find_element(By.ID, "option-candidates").send_keys("1")
    browser.find_element(By.ID, "option-seed").send_keys("0")
    assert run(browser, "generate_image") == "done", browser.find_element(By.ID, "error").text
    assert browser.find_element(By.ID, "view").get_attribute("data-drawn") == "generate_image"
    assert colours(browser, "view") > 3 and "the answer's picture" in browser.find_element(By.ID, "view-caption").text
    shot(browser, "generate_image", request)


@needs_browser
@pytest.mark.parametrize("kind, words", [("text", "could not read the uploaded file as an image"), ("huge", "pixels; this server takes at most")])
def test_a_bad_upload_shows_the_servers_message(server, browser, files, kind, words, request):
    url, _ = server
    with open(files[kind], "rb") as f, httpx.Client(timeout=WAIT) as client:
        expected = client.post(url + "v1/detect", files={"image": (files[kind].name, f)})
    assert expected.status_code in (413, 422) and words in expected.json()["error"]
    open_page(browser, url)
    choose(browser, "detect", files[kind])
    assert run(browser, "detect") == "error"
    error = browser.find_element(By.ID, "error")
    assert error.is_displayed() and error.get_attribute("role") == "alert"
    assert error.text == expected.json()["error"]
    assert not browser.find_elements(By.CSS_SELECTOR, "#results li")
    shot(browser, f"error-{kind}", request)


