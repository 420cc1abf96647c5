"""How inference.py should upscale an alpha channel: the model's render (alpha=model) against PIL bicubic
(alpha=bicubic), on real RGBA images whose ground truth is known. Each Set5 image gets an alpha mask at
full size: a soft one (a disc blurred by a Gaussian), a sharp one (an anti-aliased disc) or a matte cut
along the image's own shapes (its luma above the median, ramped over 10% of the range); the mask is
made smaller by PIL bicubic and 8-bit rounding (as an RGBA file holds it), upscaled back by each rule and
scored by the PSNR of the 8-bit result against the full-size mask.

    python scripts/compare_alpha.py --root=tests/data/benchmark/Set5 --scales=2,4
"""
import argparse
import sys
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from checkpoint import model_from_checkpoint
from cli import upscaled_alpha
from dataset import list_images
from imgproc import Picture, load_uint8, pil_resize_float, quantize, to_integer


def masks(image: np.ndarray) -> dict[str, np.ndarray]:
    """The three alpha masks of an HxWx3 uint8 image, HxW float in [0, 1]: 'soft', a disc blurred by a
    Gaussian of 3% of the short side; 'sharp', a disc anti-aliased over one pixel (drawn 4x larger and
    averaged); 'matte', the image's luma above its median, ramped over 10% of the range."""
    height, width = image.shape[:2]
    side = min(height, width)
    rows, cols = np.mgrid[:4 * height, :4 * width] / 4
    disc = (np.hypot(rows - height / 2, cols - width / 2) < 0.35 * side).astype(np.float32)
    sharp = cv2.resize(disc, (width, height), interpolation=cv2.INTER_AREA)
    luma = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY).astype(np.float32) / 255
    return {'soft': cv2.GaussianBlur(sharp, (0, 0), 0.03 * side), 'sharp': sharp,
            'matte': np.clip((luma - np.median(luma)) / 0.1 + 0.5, 0, 1)}


def alpha_psnr(model, truth: np.ndarray, scale: int, rule: str) -> float:
    """PSNR (dB) of the 8-bit alpha that `rule` makes of truth shrunk by `scale`, against truth in 8 bits."""
    height, width = truth.shape
    small = to_integer(pil_resize_float(truth, (height // scale, width // scale))) / np.float32(255)
    picture = Picture(np.repeat(small[:, :, None], 3, axis=2), small.astype(np.float32), True, 8, None, None)
    cfg = SimpleNamespace(alpha=rule, chunk=30000, amp='fp32')
    with torch.no_grad():
        alpha = upscaled_alpha(model, torch.device('cpu'), picture, (height, width), (0, 0, height, width), cfg)
    error = quantize(alpha).astype(np.float64)[:, :, 0] - to_integer(truth)
    return 10 * np.log10(255 ** 2 / np.mean(error ** 2))


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--root', default='tests/data/benchmark/Set5', help="a benchmark set (<root>/HR)")
    parser.add_argument('--scales', default='2,4', help="comma-separated integer factors")
    parser.add_argument('--weights', default='results/pretrained_models/edsr-baseline-liif.pth')
    args = parser.parse_args(argv)
    model = model_from_checkpoint(args.weights).eval()
    print('| mask | scale | alpha=model (dB) | alpha=bicubic (dB) |\n|---|---|---|---|')
    for kind in ('soft', 'sharp', 'matte'):
        for scale in (int(s) for s in args.scales.split(',')):
            scores = {rule: [] for rule in ('model', 'bicubic')}
            for path in list_images(Path(args.root) / 'HR'):
                image = load_uint8(path)
                image = image[:image.shape[0] - image.shape[0] % scale, :image.shape[1] - image.shape[1] % scale]
                for rule, got in scores.items():
                    got.append(alpha_psnr(model, masks(image)[kind], scale, rule))
            print(f"| {kind} | x{scale} | {np.mean(scores['model']):.2f} | {np.mean(scores['bicubic']):.2f} |")

if __name__ == '__main__':
    main(sys.argv[1:])
