"""Make bicubic LR inputs from a folder of HR images, in the EDSR benchmark layout:
<out>/X<s>/<name>x<s>.png = MATLAB imresize(HR cropped top-left to a multiple of s, 1/s, 'bicubic').

    python scripts/make_lr.py --hr path/to/HR --out path/to/LR_bicubic --scales 2,3,4
"""
import argparse
import sys
from pathlib import Path

from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from cli import run_main
from dataset import IMAGE_SUFFIXES
from imgproc import imresize, load_image, write_image


def parse_scales(text: str) -> list[int]:
    """'2,3,4' -> [2, 3, 4]: integer factors >= 2."""
    try:
        scales = [int(s) for s in text.replace(' ', ',').split(',') if s]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--scales takes integers like 2,3,4, got {text!r}") from None
    if not scales or min(scales) < 2:
        raise argparse.ArgumentTypeError(f"--scales must be integers >= 2, got {text!r}")
    return sorted(set(scales))


def make_lr(hr_dir: Path, out_dir: Path, scales: list[int]) -> list[Path]:
    """Write the LR file of every HR image in hr_dir at every scale; returns the files written."""
    if not hr_dir.is_dir():
        raise FileNotFoundError(f"HR folder {hr_dir} does not exist")
    hr_files = sorted(p for p in hr_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not hr_files:
        raise FileNotFoundError(f"HR folder {hr_dir} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    written = []
    for hr_file in tqdm(hr_files, desc='make_lr', unit='img', dynamic_ncols=True):
        hr = load_image(hr_file)
        for s in scales:
            lr_h, lr_w = hr.shape[0] // s, hr.shape[1] // s
            if lr_h < 1 or lr_w < 1:
                raise ValueError(f"{hr_file} ({hr.shape[1]}x{hr.shape[0]}) is too small for x{s}")
            lr = imresize(hr[:lr_h * s, :lr_w * s], size=(lr_h, lr_w))
            written.append(write_image(out_dir / f'X{s}' / f'{hr_file.stem}x{s}.png', lr))
    return written


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--hr', type=Path, required=True, help='folder of HR images')
    parser.add_argument('--out', type=Path, required=True, help='output folder (gets X<s>/ subfolders)')
    parser.add_argument('--scales', type=parse_scales, default=[2, 3, 4],
                        help='comma-separated integer scales (default 2,3,4)')
    args = parser.parse_args(argv)
    written = make_lr(args.hr, args.out, args.scales)
    print(f"wrote {len(written)} LR images under {args.out}")


if __name__ == '__main__':
    sys.exit(run_main(main, sys.argv[1:]))
