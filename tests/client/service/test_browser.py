"""The page in a real headless Chromium (Debian's package, driven by Playwright; no browser download)."""

from __future__ import annotations

import json
import os
import shutil
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from service_helpers import TOKEN, LiveServer

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SCREENSHOT = Path(__file__).resolve().parents[3] / "docs" / "img" / "site-service.png"

pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium (make setup installs it)"),
]


@contextmanager
def opened_page(config, token: str = TOKEN, viewport: tuple[int, int] = (1200, 800)):
    """The service on a socket and the page open in headless Chromium: (live, page, page errors)."""
    from playwright.sync_api import sync_playwright

    with LiveServer(config) as live, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": viewport[0], "height": viewport[1]})
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(f"{live.url}/#token={token}")
            yield live, page, errors
        finally:
            browser.close()


def test_click_overlay_accept_in_a_real_browser(make_config, blob, blob_base_2d, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    images = tmp_path / "ward-images"
    images.mkdir()
    for i in range(3):  # larger images than the API tests use, so the screenshot reads well
        np.save(images / f"case-{i + 1:03d}.npy", blob((128, 128), seed=10 + i)[0][0])
    store = tmp_path / "ward-store"
    config = make_config(site="ward-3", images=str(images), store=str(store), base=str(blob_base_2d))
    with LiveServer(config) as live, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1440, "height": 860}, device_scale_factor=1)
            external = []  # every request the page makes must go to the service itself
            page.on("request", lambda r: None if r.url.startswith((live.url, "data:")) else external.append(r.url))
            errors = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(f"{live.url}/#token={TOKEN}")
            viewer = page.locator("#viewer")
            # The page's CSP forbids eval, so waits go through locator assertions, not wait_for_function.
            expect(viewer).to_have_attribute("data-image", "case-001", timeout=60_000)
            expect(viewer).to_have_attribute("data-busy", "0", timeout=60_000)  # a loaded CI machine
            assert viewer.get_attribute("data-mask-area") == "0"
            assert "token" not in page.url  # the token left the address bar

            box = page.locator("#canvas").bounding_box()
            page.mouse.click(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)  # the image centre
            expect(viewer).to_have_attribute("data-clicks", "1", timeout=60_000)
            expect(viewer).not_to_have_attribute("data-mask-area", "0")  # the overlay changed
            area = int(viewer.get_attribute("data-mask-area"))
            page.mouse.click(box["x"] + box["width"] / 2 + 250, box["y"] + box["height"] / 2 - 250, button="right")
            expect(viewer).to_have_attribute("data-clicks", "2", timeout=60_000)
            expect(viewer).to_have_attribute("data-busy", "0", timeout=60_000)
            assert "click → mask" in page.locator("#hud-latency").inner_text()
            second = int(viewer.get_attribute("data-mask-area"))

            page.keyboard.press("Enter")  # accept
            expect(viewer).to_have_attribute("data-accepted", "1", timeout=60_000)
            expect(viewer).to_have_attribute("data-image", "case-002", timeout=60_000)  # on to the next image
            expect(viewer).to_have_attribute("data-busy", "0", timeout=60_000)
            accepted = store / "cache" / "case-001"
            assert accepted.is_dir(), "the accepted label is not in the site store's cache"

            page.mouse.click(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)  # the next image, one click
            expect(viewer).to_have_attribute("data-clicks", "1", timeout=60_000)
            expect(viewer).not_to_have_attribute("data-mask-area", "0")
            shot = tmp_path / "site-service.png"
            page.wait_for_timeout(3500)  # one status refresh, so the chips show live values
            page.screenshot(path=str(shot))
            assert shot.stat().st_size > 10_000
            if os.environ.get("FEDPOINT_SAVE_SCREENSHOT") == "1":
                SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(shot, SCREENSHOT)
            assert not errors, errors
            assert not external, external  # nothing fetched from anywhere else
        finally:
            browser.close()

    mask = np.load(accepted / "mask.npy")
    assert mask.shape == (128, 128) and int(mask.sum()) == second and area > 0
    meta = json.loads((accepted / "meta.json").read_text())
    assert meta["user"] == "web" and meta["clicks"] == 2


def _deep_point(region: np.ndarray) -> tuple[int, int]:
    from scipy import ndimage

    depth = ndimage.distance_transform_edt(np.pad(region, 1))[1:-1, 1:-1]
    return tuple(int(i) for i in np.unravel_index(int(np.argmax(depth)), region.shape))


def test_two_clicks_in_the_lungs_of_the_example_site_segment_the_lung_field(make_config, tmp_path):
    """The `site init` example with the packaged base, as a new user meets it: two left clicks,
    one inside each lung of `lung2-lung-field-z034`, must give a mask that holds both clicked
    points and lies on the known lung field (precision and Dice at least one half)."""
    import httpx
    from playwright.sync_api import expect, sync_playwright
    from scipy import ndimage

    from fedpoint.client.service.example import write_example_site
    from fedpoint.data import load_dataset

    folder = tmp_path / "ward"
    write_example_site(folder, "ward", ["pyradiomics-lung"], volume=False)
    image_id = "lung2-lung-field-z034"
    assert (folder / "images" / f"{image_id}.nii.gz").exists()
    case = load_dataset("pyradiomics-lung").case("lung2")
    lung = next(o for o in case.objects if o.name == "lung-field").mask[..., 34]
    parts, n = ndimage.label(lung)
    sizes = np.bincount(parts.ravel())[1:]
    lungs = [parts == i + 1 for i in np.argsort(-sizes)[:2]]
    points = [_deep_point(region) for region in lungs]
    store = tmp_path / "ward-store"
    config = make_config(site="ward", modality="CT", images=str(folder / "images"), store=str(store), base="base2d",
                         mode="mid+post")
    with LiveServer(config) as live, sync_playwright() as pw:
        meta = httpx.get(f"{live.url}/api/images/{image_id}", headers={"Authorization": f"Bearer {TOKEN}"}).json()
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1440, "height": 860}, device_scale_factor=1)
            page.goto(f"{live.url}/#token={TOKEN}")
            viewer = page.locator("#viewer")
            expect(viewer).not_to_have_attribute("data-image", "", timeout=60_000)
            page.locator(f'#image-list li[data-id="{image_id}"]').click()
            expect(viewer).to_have_attribute("data-image", image_id, timeout=60_000)
            expect(viewer).to_have_attribute("data-busy", "0", timeout=60_000)
            box = page.locator("#canvas").bounding_box()
            width, height = lung.shape  # arrays are (x, y)
            s = min(box["width"] / width, box["height"] / height) * 0.94  # the page's fitView
            ox, oy = (box["width"] - width * s) / 2, (box["height"] - height * s) / 2
            for k, (x, y) in enumerate(points, start=1):
                row = height - 1 - y if meta.get("flip_y") else y
                page.mouse.click(box["x"] + ox + (x + 0.5) * s, box["y"] + oy + (row + 0.5) * s)
                expect(viewer).to_have_attribute("data-clicks", str(k), timeout=60_000)
                expect(viewer).to_have_attribute("data-busy", "0", timeout=60_000)
            page.keyboard.press("Enter")
            expect(viewer).to_have_attribute("data-accepted", "1", timeout=60_000)
        finally:
            browser.close()
    cases = [p for p in (store / "cache").iterdir() if p.name.startswith(image_id)]
    mask = np.load(cases[0] / "mask.npy")
    assert mask.shape == lung.shape
    assert all(mask[p] for p in points), "every clicked point must be inside the mask"
    inter = float((mask & lung).sum())
    assert inter / mask.sum() >= 0.5, f"only {inter / mask.sum():.2f} of the mask lies on the lung field"
    assert 2 * inter / (mask.sum() + lung.sum()) >= 0.5


def test_a_3d_base_shows_which_slices_hold_the_mask(make_config, tiny_base_3d, tmp_path):
    """With a 3D base one click is one 3D prediction; the page says on which slices the mask lies."""
    import nibabel as nib
    from playwright.sync_api import expect

    images = tmp_path / "vol-images"
    images.mkdir()
    grid = np.indices((48, 48, 12)).astype(np.float32)
    ball = (((grid - np.array([24, 24, 6])[:, None, None, None]) / np.array([10, 10, 3])[:, None, None, None]) ** 2).sum(0) <= 1
    volume = (0.2 + 0.6 * ball + 0.05 * np.random.default_rng(0).standard_normal(ball.shape)).astype(np.float32)
    nib.save(nib.Nifti1Image(volume, np.diag([0.8, 0.8, 3.0, 1.0])), str(images / "vol.nii.gz"))
    config = make_config(images=str(images), store=str(tmp_path / "vol-store"), base=str(tiny_base_3d))
    with opened_page(config) as (_live, page, errors):
        viewer = page.locator("#viewer")
        expect(viewer).to_have_attribute("data-image", "vol", timeout=60_000)
        expect(viewer).to_have_attribute("data-busy", "0", timeout=60_000)  # a loaded CI machine
        box = page.locator("#canvas").bounding_box()
        page.mouse.click(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
        expect(viewer).to_have_attribute("data-clicks", "1", timeout=60_000)
        expect(page.locator("#mask-slices")).to_contain_text("mask on slice", timeout=60_000)
        held = [int(z) for z in viewer.get_attribute("data-mask-slices").split(",")]
        assert len(held) > 1 and all(0 <= z < 12 for z in held)  # one click, a 3D mask over several slices
        assert not errors, errors


def test_two_structures_and_a_named_user_in_the_page(make_config, blob, blob_base_2d, tmp_path):
    """A site that labels two structures: the page offers both in their colours, each click goes to
    the chosen one, each accept is its own cache entry; a named user's token fixes the name shown."""
    from playwright.sync_api import expect

    from fedpoint.client.service.users import UserRegistry

    images = tmp_path / "two-images"
    images.mkdir()
    np.save(images / "case-001.npy", blob((96, 96), seed=3)[0][0])
    store = tmp_path / "two-store"
    token = UserRegistry(store / "users.json").add("dr-lee")
    config = make_config(images=str(images), store=str(store), base=str(blob_base_2d), labels=["liver", "lesion"])
    with opened_page(config, token) as (_live, page, errors):
        viewer = page.locator("#viewer")
        expect(viewer).to_have_attribute("data-image", "case-001", timeout=60_000)
        expect(viewer).to_have_attribute("data-structure", "liver")
        expect(page.locator("#user-name")).to_have_value("dr-lee")
        expect(page.locator("#user-name")).to_be_disabled()
        buttons = page.locator("#structures .structure")
        expect(buttons).to_have_count(2)
        box = page.locator("#canvas").bounding_box()
        centre = (box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
        page.mouse.click(*centre)
        expect(viewer).to_have_attribute("data-clicks", "1", timeout=60_000)
        page.keyboard.press("Enter")  # accept the liver
        expect(viewer).to_have_attribute("data-accepted", "1", timeout=60_000)
        expect(viewer).to_have_attribute("data-busy", "0", timeout=60_000)
        page.locator('#structures [data-structure="lesion"]').click()
        expect(viewer).to_have_attribute("data-structure", "lesion")
        expect(page.locator('#structures [data-structure="lesion"]')).to_have_attribute("aria-checked", "true")
        expect(viewer).to_have_attribute("data-clicks", "0", timeout=60_000)  # the lesion has its own session
        page.mouse.click(*centre)
        expect(viewer).to_have_attribute("data-clicks", "1", timeout=60_000)
        expect(viewer).to_have_attribute("data-busy", "0", timeout=60_000)
        page.keyboard.press("Enter")
        expect(viewer).to_have_attribute("data-accepted", "2", timeout=60_000)
        expect(viewer).to_have_attribute("data-busy", "0", timeout=60_000)
        assert not errors, errors
    cases = sorted(p.relative_to(store).as_posix() for p in store.glob("tasks/*/cache/*") if p.is_dir())
    assert cases == ["tasks/lesion/cache/case-001.lesion", "tasks/liver/cache/case-001.liver"]  # each in its structure's store
    metas = [json.loads((store / c / "meta.json").read_text()) for c in cases]
    assert [(m["structure"], m["user"]) for m in metas] == [("lesion", "dr-lee"), ("liver", "dr-lee")]


def test_a_box_dragged_in_the_page_gives_a_mask_and_undo_removes_it(make_config, blob, tmp_path):
    from playwright.sync_api import expect

    from service_helpers import train_blob_base

    base = train_blob_base(tmp_path / "blob-box-base" / "blobbox2d", blob, steps=120, box=True)
    images = tmp_path / "box-images"
    images.mkdir()
    image, mask = blob((128, 128), seed=21)
    np.save(images / "case-001.npy", image[0])
    config = make_config(images=str(images), store=str(tmp_path / "box-store"), base=str(base))
    with opened_page(config, viewport=(1000, 800)) as (live, page, errors):
        viewer = page.locator("#viewer")
        expect(viewer).to_have_attribute("data-image", "case-001", timeout=60_000)
        expect(viewer).to_have_attribute("data-busy", "0", timeout=60_000)  # a loaded CI machine
        canvas = page.locator("#canvas").bounding_box()
        xs, ys = np.nonzero(mask)  # the page shows x to the right and y down
        scale = min(canvas["width"] / 128, canvas["height"] / 128) * 0.94
        left = canvas["x"] + (canvas["width"] - 128 * scale) / 2
        top = canvas["y"] + (canvas["height"] - 128 * scale) / 2
        page.mouse.move(left + (xs.min() + 0.5) * scale, top + (ys.min() + 0.5) * scale)
        page.mouse.down()
        page.mouse.move(left + (xs.max() + 0.5) * scale, top + (ys.max() + 0.5) * scale, steps=8)
        page.mouse.up()
        expect(viewer).not_to_have_attribute("data-box", "", timeout=60_000)
        expect(viewer).to_have_attribute("data-busy", "0", timeout=60_000)
        lo_hi = [int(v) for v in viewer.get_attribute("data-box").split(",")]
        assert abs(lo_hi[0] - xs.min()) <= 2 and abs(lo_hi[3] - ys.max()) <= 2, lo_hi
        assert viewer.get_attribute("data-clicks") == "0", "a drag is a box, not a click"
        session = live.state.sessions.get(("case-001", "web", None, live.state.desk.structure(None))).session
        assert session.mask.sum() > 0 and int(viewer.get_attribute("data-mask-area")) == int(session.mask.sum())
        assert (session.mask & mask).sum() / session.mask.sum() > 0.5, "the box's mask lies on the blob"
        page.keyboard.press("z")
        expect(viewer).to_have_attribute("data-box", "", timeout=60_000)
        expect(viewer).to_have_attribute("data-mask-area", "0")
        assert not errors, errors


def test_a_box_on_one_slice_of_a_volume_shows_masks_on_its_neighbours(make_config, tmp_path):
    """The propagation route in the page: a box drawn on one slice of a volume (the packaged 2D base)
    is carried to the neighbouring slices; the page shows a progress while it runs, marks the
    slices that hold the mask and draws the mask on a neighbour; accept stores every slice."""
    from playwright.sync_api import expect
    from test_volumes import write_volume_site

    images = tmp_path / "volume-images"
    truth = write_volume_site(images)
    (images / "flat.npy").unlink()
    store = tmp_path / "volume-store"
    config = make_config(images=str(images), store=str(store), base="base2d")
    with opened_page(config, viewport=(1000, 800)) as (live, page, errors):
        viewer = page.locator("#viewer")
        expect(viewer).to_have_attribute("data-image", "vol", timeout=60_000)
        expect(viewer).to_have_attribute("data-route", "propagate")
        expect(viewer).to_have_attribute("data-busy", "0", timeout=60_000)
        expect(page.locator("#slice-value")).to_have_text("13 / 24")  # the middle slice, 12
        meta = live.client.get("/api/images/vol").json()
        canvas = page.locator("#canvas").bounding_box()
        scale = min(canvas["width"] / 64, canvas["height"] / 64) * 0.94
        left = canvas["x"] + (canvas["width"] - 64 * scale) / 2
        top = canvas["y"] + (canvas["height"] - 64 * scale) / 2

        def screen(x, y):
            row = 63 - y if meta["flip_y"] else y
            return left + (x + 0.5) * scale, top + (row + 0.5) * scale

        xs, ys = np.nonzero(truth[..., 12])
        model = live.state.engine.model
        with model.lock:  # hold the model so the page shows the propagation's progress
            page.mouse.move(*screen(xs.min(), ys.min()))
            page.mouse.down()
            page.mouse.move(*screen(xs.max(), ys.max()), steps=8)
            page.mouse.up()
            expect(page.locator("#volume-progress")).to_be_visible(timeout=60_000)
            expect(page.locator("#volume-progress-text")).to_contain_text("0 / ≤ 23 slices")
        expect(viewer).to_have_attribute("data-busy", "0", timeout=60_000)
        expect(page.locator("#volume-progress")).to_be_hidden()
        held = [int(z) for z in viewer.get_attribute("data-mask-slices").split(",")]
        assert {11, 12, 13} <= set(held), held
        assert viewer.get_attribute("data-user-slices") == "12"
        expect(page.locator("#mask-slices")).to_contain_text("mask on slices")
        expect(page.locator("#slice-marks span.user")).to_have_count(1)
        expect(page.locator("#slice-marks span.on")).to_have_count(len(held) - 1)
        page.keyboard.press("ArrowUp")  # the next slice: its propagated mask is drawn
        expect(page.locator("#slice-value")).to_have_text("14 / 24")
        expect(viewer).not_to_have_attribute("data-mask-area", "0", timeout=60_000)
        area = int(viewer.get_attribute("data-mask-area"))
        page.mouse.click(*screen(32, 32))  # a correction on this slice makes it a user slice
        expect(viewer).to_have_attribute("data-user-slices", "12,13", timeout=60_000)
        expect(viewer).to_have_attribute("data-busy", "0", timeout=60_000)
        page.keyboard.press("Enter")
        expect(viewer).to_have_attribute("data-accepted", "1", timeout=60_000)
        assert not errors, errors
    cases = sorted(p.name for p in (store / "cache").iterdir() if p.is_dir())
    assert len(cases) >= 3 and "vol.z0012" in cases and "vol.z0013" in cases, cases
    assert area > 0 and np.load(store / "cache" / "vol.z0013" / "mask.npy").any()
