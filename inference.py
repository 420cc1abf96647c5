"""Super-resolve one image or a folder of images with LIIF, at any scale or to an exact size.

    python inference.py                                        # figure/example_lr.png at x4
    python inference.py --input=photo.jpg --scale=2.5          # results/inference/photo_x2.5.png
    python inference.py --input=photos/ --scale_hw=[2,3] --output=out/
    python inference.py --input=photo.png --size=[1080,1920] --output=photo_1080p.png
    python inference.py --input=photo.png --scale=16 --window=[0,0,512,512]   # one part of the output

Output size: with a factor s (or separate height/width factors), an h x w input gives
round(h * s) x round(w * s) (Python's round: halves go to the even integer); --size=[H,W] gives
exactly H x W. Output path: --output (a file for one image, a folder for a folder; one image goes
into a folder given as an existing folder or a path ending in '/'), else
results/inference/<name>_x<scale>.png (<name>_x<sh>x<sw>.png, <name>_<H>x<W>.png).
Weights ending in .onnx (from scripts/export_onnx.py) run through ONNX Runtime on the CPU, in
windows of at most `chunk` output pixels (0: 65536), without a PyTorch model.
A window [top, left, height, width] writes only that rectangle of the output, at the cost of that
part alone.
"""
import sys
from pathlib import Path
from types import SimpleNamespace

import torch

import config
from common import (check_writable, checkpoint_model, format_scale, load_onnx, pick_device, resolve_weights,
                    run_main, set_threads)
from dataset import IMAGE_SUFFIXES, list_images
from imgproc import image_to_tensor, quantize, read_image, write_image
from onnx_model import WINDOW_QUERIES
from precision import check_amp, use_tf32
from render import check_size, check_window, output_size

DEFAULT_OUTPUT_DIR = Path('results/inference')


def size_tag(cfg: SimpleNamespace) -> str:
    """What the output file name says about its size: 'x4', 'x2x3' or '1080x1920'."""
    if cfg.size:
        return f'{cfg.size[0]}x{cfg.size[1]}'
    if cfg.scale_hw:
        return f'x{format_scale(cfg.scale_hw[0])}x{format_scale(cfg.scale_hw[1])}'
    return f'x{format_scale(cfg.scale)}'


def plan(cfg: SimpleNamespace) -> list[tuple[Path, Path]]:
    """(input, output) path pairs for cfg.input and cfg.output. A folder input needs a folder output;
    one image goes to cfg.output, or into it with the default name when it is a folder (it exists
    as one, or ends in '/')."""
    source = Path(cfg.input)
    name = f'{source.stem}_{size_tag(cfg)}.png'
    into_folder = not cfg.output or cfg.output.endswith(('/', '\\')) or Path(cfg.output).is_dir()
    folder = Path(cfg.output) if cfg.output else DEFAULT_OUTPUT_DIR
    if source.is_dir():
        if not into_folder and Path(cfg.output).suffix:
            raise ValueError(f"output {cfg.output!r} looks like a file name, but input {cfg.input!r} is a folder: "
                             f"give an output folder")
        inputs = list_images(source)  # sorted; other files are skipped with a warning
        return [(p, folder / f'{p.stem}_{size_tag(cfg)}.png') for p in inputs]
    if into_folder:
        return [(source, folder / name)]
    if Path(cfg.output).suffix.lower() not in IMAGE_SUFFIXES:
        raise ValueError(f"output {cfg.output!r}: for one input image, give an image file name "
                         f"({', '.join(IMAGE_SUFFIXES)}) or a folder (ending in '/')")
    if cfg.bits == 16 and Path(cfg.output).suffix.lower() not in ('.png', '.tif', '.tiff'):
        raise ValueError(f"output {cfg.output!r}: 16-bit output needs a .png or .tif file")
    return [(source, Path(cfg.output))]


def checked_size(source: Path, cfg: SimpleNamespace) -> tuple[tuple[int, int], tuple[int, int, int, int]]:
    """The output size for the image at `source` and the window of it to write (cfg.window, else all
    of it), refused when empty, outside the output or beyond cfg.max_pixels."""
    lr = read_image(source)
    try:
        height, width = output_size(lr.shape[0], lr.shape[1], cfg.scale_hw or cfg.scale, cfg.size)
        if height < 1 or width < 1:
            raise ValueError(f"{lr.shape[0]}x{lr.shape[1]} at {size_tag(cfg)} gives an empty {height}x{width} output")
        window = check_window(cfg.window or None, check_size((height, width)))
    except ValueError as e:
        raise ValueError(f"{source}: {e}") from None
    if window[2] * window[3] > cfg.max_pixels:
        raise ValueError(f"{source}: the {window[2]}x{window[3]} output has {window[2] * window[3]:,} pixels, "
                         f"more than max_pixels={cfg.max_pixels:,}; ask for a smaller size or raise --max_pixels")
    return (height, width), window


def main(argv: list[str]) -> list[Path]:
    """Run inference; returns the written output paths. Every input is checked before any work."""
    cfg = config.parse(argv, 'inference')
    config.check(cfg, 'inference')
    set_threads(cfg.threads)
    jobs = [(source, target, checked_size(source, cfg)) for source, target in plan(cfg)]
    for folder in dict.fromkeys(target.parent for _, target, _ in jobs):
        check_writable(folder, 'output folder')
    weights = resolve_weights(cfg.weights)
    if weights.suffix.lower() == '.onnx':
        model, device = load_onnx(cfg, argv, weights), None
    else:
        device = pick_device(cfg.device)
        model = checkpoint_model(cfg, argv, weights).to(device).eval()
        check_amp(device, cfg.amp)
        use_tf32(cfg.tf32)
    for source, target, (size, window) in jobs:
        lr = image_to_tensor(read_image(source))[None]
        if device is None:
            sr = torch.from_numpy(model.render(lr.numpy(), size, window, cfg.chunk or WINDOW_QUERIES, progress=True))
        else:
            sr = model.render(lr.to(device), size, chunk=cfg.chunk, amp=cfg.amp, progress=True, window=window)
        write_image(target, quantize(sr, cfg.bits))
        part = f" window {list(window)}" if cfg.window else ""
        print(f"{source} ({lr.shape[2]}x{lr.shape[3]}) -> {target} ({size[0]}x{size[1]}{part})")
    return [target for _, target, _ in jobs]


if __name__ == '__main__':
    sys.exit(run_main(main, sys.argv[1:]))
