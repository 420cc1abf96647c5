"""Lay out celebA-HQ for the celebAHQ-* experiments, as the official LIIF prepares it, one folder per split:
<out>/<split>/256/<name>.png = PIL bicubic of the 1024x1024 original to 256x256, and <out>/<split>/128, /64,
/32 = PIL bicubic of that 256x256 image; the splits are the lists of the official split.json
({"train": [...], "val": [...]}, file names such as "12345.png").

    python scripts/prepare_celebahq.py --originals path/to/data1024x1024 --split path/to/split.json --out data/celebAHQ
"""
import argparse
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from cli import run_main
from imgproc import pil_resize, write_image

SIZES = (256, 128, 64, 32)  # 256 from the original, the others from the 256 image


def read_split(path: Path) -> dict[str, list[str]]:
    """The split file's {split name: [file stems]}."""
    try:
        split = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"cannot read the split file {path}: {e}") from None
    if not isinstance(split, dict) or not all(isinstance(v, list) for v in split.values()):
        raise ValueError(f"{path} is not a split file: expected {{\"train\": [names], \"val\": [names]}}")
    return {name: [Path(str(f)).stem for f in files] for name, files in split.items()}


def prepare(originals: Path, split_file: Path, out: Path) -> int:
    """Write every split's images at every size; returns the number of images written."""
    if not originals.is_dir():
        raise FileNotFoundError(f"folder of originals {originals} does not exist")
    by_stem = {p.stem: p for p in originals.iterdir() if p.is_file()}
    split = read_split(split_file)
    missing = [stem for stems in split.values() for stem in stems if stem not in by_stem]
    if missing:
        raise FileNotFoundError(f"{len(missing)} image(s) of {split_file} are not in {originals}, "
                                f"e.g. {', '.join(missing[:3])}")
    count = 0
    for name, stems in split.items():
        if stems != sorted(stems):
            print(f"note: the '{name}' list is not in sorted name order; folders are read in sorted order, so "
                  f"'first N' (valid_first) picks other images than the official first N of the list")
        for stem in tqdm(stems, desc=name, unit='img', dynamic_ncols=True):
            # PIL decodes the original, as the official script does (JPEG decoders may differ by a level)
            hr = pil_resize(np.asarray(Image.open(by_stem[stem]).convert('RGB')), (256, 256))
            for size in SIZES:
                write_image(out / name / str(size) / f'{stem}.png', pil_resize(hr, (size, size)))
                count += 1
    return count


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--originals', type=Path, required=True, help='folder of the 1024x1024 celebA-HQ images')
    parser.add_argument('--split', type=Path, required=True, help="the official split.json")
    parser.add_argument('--out', type=Path, default=Path('data/celebAHQ'), help='output folder (default data/celebAHQ)')
    args = parser.parse_args(argv)
    count = prepare(args.originals, args.split, args.out)
    print(f"wrote {count} images under {args.out}")


if __name__ == '__main__':
    sys.exit(run_main(main, sys.argv[1:]))
