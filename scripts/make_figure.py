"""Comparison figures as the paper shows them, and a screenshot of the zoom viewer.

    python scripts/make_figure.py                                    # figure/zoom_comparison.png
    python scripts/make_figure.py --input=photo.png --box=40,60,16 --scales=4,12,30 --out=figure/photo_zoom.png
    python scripts/make_figure.py --screenshot=figure/viewer.png     # the viewer page at the box, in headless Chromium
    python scripts/make_figure.py --input=photo.jpg --compare=results/pretrained_models/edsr-baseline-liif-real.pth \
        --scales=2.5 --box=40,60,96 --out=figure/real_photo.png        # two checkpoints, a row each

The figure: the input with the region marked, the region itself (LR crop), and for each scale the
region's bicubic (PIL, as the project resizes) and LIIF renders (of a second checkpoint too, --compare). Each render is the
window of the whole image rendered at that scale, so only the region is computed, and the panels
are shown at the largest scale's size (smaller scales magnified by pixel repetition, so their
pixels stay visible). --screenshot drives the real page (scripts/viewer.py) in headless Chromium
(the `chromium` and `chromium-driver` packages, and selenium): zoomed in, in compare mode.
"""
import argparse
import base64
import shutil
import sys
import time
from io import BytesIO
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont, ImageOps

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import config
from checkpoint import model_from_checkpoint
from cli import ArgumentParser, pick_device, run_main
from files import (
    check_writable,
    replacing,
)
from imgproc import bicubic_window, image_to_tensor, load_uint8, quantize, read_image
from render import output_size
from scripts.viewer import Viewer, make_server, serve_in_thread
from weights import resolve_weights

GAP = 6  # pixels between panels
LABEL = 26  # height of the label strip above each panel
RED = (230, 40, 40)


# ---------------------------------------------------------------- headless Chromium

def find_chromium() -> tuple[str, str]:
    """(browser, driver) paths; ValueError with the reason when selenium, Chromium or its driver is missing."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        raise ValueError("selenium is not installed (pip install -r requirements.txt)") from None
    browser = next(filter(None, map(shutil.which, ('chromium', 'chromium-browser', 'google-chrome'))), None)
    driver = shutil.which('chromedriver')
    if not browser or not driver:
        raise ValueError("no Chromium or chromedriver here (Debian: apt-get install chromium chromium-driver)")
    return browser, driver


def headless_chromium(width: int, height: int, download_dir: Path | None = None, webgpu: bool = False):
    """A selenium driver for headless Chromium with a width x height viewport at one device pixel per CSS pixel;
    webgpu: with WebGPU on Vulkan (SwiftShader, a CPU emulation, where there is no GPU) instead of no GPU."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    browser, driver_path = find_chromium()
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    gpu = ('--enable-unsafe-webgpu', '--enable-features=Vulkan') if webgpu else ('--disable-gpu',)
    for arg in ('--headless=new', '--no-sandbox', *gpu, '--force-device-scale-factor=1',
                '--disable-dev-shm-usage', '--force-color-profile=srgb', '--hide-scrollbars'):
        options.add_argument(arg)
    driver = webdriver.Chrome(options=options, service=Service(driver_path))
    # the window size includes the browser's frame: set it so that the viewport has the asked size
    driver.set_window_size(width, height)
    inner = driver.execute_script('return [innerWidth, innerHeight]')
    driver.set_window_size(2 * width - inner[0], 2 * height - inner[1])
    if download_dir is not None:
        driver.execute_cdp_cmd('Browser.setDownloadBehavior', {'behavior': 'allow', 'downloadPath': str(download_dir)})
    return driver


def wait_ready(driver, timeout: float = 120) -> None:
    """Wait until the page shows the model's pixels for its current view (RuntimeError on a page error)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        status = driver.execute_script('return document.body.dataset.status')
        if status == 'ready':
            return
        if status == 'error':
            raise RuntimeError(f"the viewer page says: {driver.find_element('id', 'status').text}")
        time.sleep(0.05)
    raise TimeoutError(f"the viewer page was not ready within {timeout} s")


def canvas_pixels(driver) -> np.ndarray:
    """The viewer's canvas as an HxWx3 uint8 array (read back as a PNG, so exactly what it holds)."""
    url = driver.execute_script("return document.getElementById('view').toDataURL('image/png')")
    return np.asarray(Image.open(BytesIO(base64.b64decode(url.split(',', 1)[1]))).convert('RGB'))


def screenshot(viewer: Viewer, out: Path, centre: tuple[float, float], width: int = 960, height: int = 600,
               zoom: float = 12.0) -> Path:
    """The viewer page for `viewer` at `zoom` with the input point `centre` (row, column) in the middle
    of the view, in compare mode, as a PNG of the browser's viewport."""
    server = make_server(viewer, '127.0.0.1', 0)
    serve_in_thread(server)
    driver = headless_chromium(width, height)
    try:
        driver.get(f'http://127.0.0.1:{server.server_address[1]}/')
        wait_ready(driver)
        driver.execute_script("""const [z, y, x] = arguments, c = document.getElementById('view');
            const info = viewer.state.info, [H, W] = viewer.renderSize(z);
            viewer.zoomAt(z, 0, 0);
            viewer.moveTo(c.width / 2 - x * W / info.width, c.height / 2 - y * H / info.height);""",
                              zoom, *centre)
        driver.find_element('id', 'compare').click()
        wait_ready(driver)
        png = driver.get_screenshot_as_png()
    finally:
        driver.quit()
        server.shutdown()
        server.server_close()
    out.parent.mkdir(parents=True, exist_ok=True)
    with replacing(out) as tmp:
        tmp.write_bytes(png)
    return out


# ---------------------------------------------------------------- the comparison figure

def region_renders(models: list, image8: np.ndarray, lr: torch.Tensor, box: tuple[int, int, int], scale: float,
                   amp: str = 'fp32') -> list[np.ndarray]:
    """[bicubic, then each model's] uint8 renders of the square box (top, left, side) of the input at
    `scale`: the windows of the whole image's renders that cover the box."""
    top, left, side = box
    size = output_size(*image8.shape[:2], scale)
    y0, x0 = round(top * scale), round(left * scale)
    window = (y0, x0, round((top + side) * scale) - y0, round((left + side) * scale) - x0)
    return [bicubic_window(image8, size, window)] + [quantize(m.render(lr, size, amp=amp, window=window), 8)
                                                     for m in models]


def font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def labelled(panel: np.ndarray | Image.Image, text: str, side: int) -> Image.Image:
    """A side x side tile with `text` above it: an array magnified by pixel repetition to fill it, an
    image pasted as it is."""
    if isinstance(panel, np.ndarray):
        panel = Image.fromarray(panel).resize((side, side), Image.NEAREST)
    tile = Image.new('RGB', (side, side + LABEL), 'white')
    tile.paste(panel, (0, LABEL))
    ImageDraw.Draw(tile).text((4, 3), text, fill='black', font=font(18))
    return tile


def figure(models: dict, path: Path, box: tuple[int, int, int], scales: list[float], amp: str = 'fp32') -> Image.Image:
    """The comparison figure for the image at `path`: the input with the box marked and the LR crop
    (first column), then at each scale bicubic (top row) and each of `models` ({label: model}) below."""
    image8 = load_uint8(path)
    lr = image_to_tensor(read_image(path))[None].to(next(next(iter(models.values())).parameters()).device)
    top, left, side = box
    renders = [region_renders(list(models.values()), image8, lr, box, s, amp) for s in scales]
    panel = max(r.shape[0] for rows in renders for r in rows)
    enlarge = panel >= max(image8.shape[:2])  # pixel repetition when enlarging, as for the panels
    overview = ImageOps.contain(Image.fromarray(image8), (panel, panel), Image.NEAREST if enlarge else Image.LANCZOS)
    k = overview.width / image8.shape[1]
    ImageDraw.Draw(overview).rectangle([left * k, top * k, (left + side) * k - 1, (top + side) * k - 1],
                                       outline=RED, width=2)
    columns = [[labelled(overview, f"input {image8.shape[0]}x{image8.shape[1]}", panel),
                labelled(image8[top:top + side, left:left + side], f"LR crop {side}x{side}", panel)]]
    for s, rows in zip(scales, renders):
        columns.append([labelled(r, f"{label} x{s:g}", panel) for label, r in zip(['bicubic', *models], rows)])
    cell = panel + LABEL
    canvas = Image.new('RGB', (len(columns) * (panel + GAP) - GAP, (1 + len(models)) * (cell + GAP) - GAP), 'white')
    for i, column in enumerate(columns):
        for j, tile in enumerate(column):
            canvas.paste(tile, (i * (panel + GAP), j * (cell + GAP)))
    return canvas


def parse_ints(text: str, count: int, what: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(',')]
    except ValueError:
        values = []
    if len(values) != count:
        raise ValueError(f"{what} takes {count} integers separated by commas, got {text!r}")
    return values


def main(argv: list[str]) -> None:
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--input', default='figure/example_lr.png', help="the LR image")
    parser.add_argument('--box', default='24,46,16', help="region of the input: top,left,side in input pixels")
    parser.add_argument('--scales', default='4,12,30', help="scales, comma-separated")
    parser.add_argument('--out', default='figure/zoom_comparison.png', help="the figure to write")
    parser.add_argument('--screenshot', default='', help="write a screenshot of the viewer here instead")
    parser.add_argument('--weights', default=config.weights, help=f"checkpoint (default {config.weights})")
    parser.add_argument('--compare', default='', help="a second checkpoint: its renders in a third row, rows "
                        "labelled by the checkpoints' file names")
    parser.add_argument('--device', default=config.device, help="'auto', 'cpu', 'cuda' or 'cuda:N'")
    args = parser.parse_args(argv)
    box = parse_ints(args.box, 3, '--box')
    try:
        scales = [float(s) for s in args.scales.split(',')]
    except ValueError:
        raise ValueError(f"--scales takes numbers separated by commas, got {args.scales!r}") from None
    if not scales or min(scales) <= 0 or max(scales) > 64:
        raise ValueError(f"--scales must be in (0, 64], got {args.scales!r}")
    out = Path(args.screenshot or args.out)
    if out.suffix.lower() != '.png':
        raise ValueError(f"{out} must be a .png file")
    check_writable(out.parent, 'output folder')
    height, width = load_uint8(args.input).shape[:2]  # a bad input fails here, before the model loads
    top, left, side = box
    if side < 1 or top < 0 or left < 0 or top + side > height or left + side > width:
        raise ValueError(f"--box={args.box} (top, left, side) is not inside the {height}x{width} image {args.input}")
    if args.screenshot:
        find_chromium()
    device = pick_device(args.device)
    model = model_from_checkpoint(resolve_weights(args.weights)).to(device).eval()
    if args.screenshot:
        screenshot(Viewer(args.input, model), out, (box[0] + box[2] / 2, box[1] + box[2] / 2))
    else:
        models = {'LIIF': model}
        if args.compare:
            models = {Path(args.weights).stem: model,
                      Path(args.compare).stem: model_from_checkpoint(args.compare).to(device).eval()}
        image = figure(models, Path(args.input), tuple(box), scales)
        out.parent.mkdir(parents=True, exist_ok=True)
        with replacing(out) as tmp:
            image.save(tmp, optimize=True)
    print(f"wrote {out}")


if __name__ == '__main__':
    sys.exit(run_main(main, sys.argv[1:]))
