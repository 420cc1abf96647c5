"""Export a checkpoint (LIIF, MetaSR or a fixed-scale baseline) as one self-contained ONNX file that
renders any window of any size, and check it against PyTorch.

    python scripts/export_onnx.py --weights=results/pretrained_models/edsr-baseline-liif.pth --output=liif.onnx
    python inference.py --weights=liif.onnx --input=photo.png --scale=3.5   # ONNX Runtime, no PyTorch model

The file's inputs are lr (B, 3, h', w') float32 in [0, 1], a crop of the whole LR image, lr_frame int64
(top, left, h, w), where the crop starts in the whole h x w image, size int64 (H, W) and window int64 (top,
left, height, width); its output the (B, 3, height, width) window of the H x W render (unclamped). The
crop must hold what the window reads: onnx_model.lr_crop gives it (the whole image always does). After
writing, ONNX Runtime runs it on a real image at a non-integer scale and compares with PyTorch: a
file that differs by more than 1e-5 is removed and the script fails.
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from checkpoint import model_from_checkpoint
from cli import run_main
from files import check_writable
from onnx_model import CHECK_TOL, OPSET, export, self_check


def export_checked(weights: Path, output: Path, opset: int = OPSET) -> float:
    """Write the checkpoint `weights` to `output` (.onnx) and check it; returns the largest difference
    to PyTorch. On any failure nothing is left at `output`."""
    if output.suffix.lower() != '.onnx':
        raise ValueError(f"output {output} must be a file name ending in .onnx")
    if output.is_dir():
        raise ValueError(f"output {output} is a folder, not a file name")
    check_writable(output.parent, 'output folder')
    model = model_from_checkpoint(weights).eval()
    output.parent.mkdir(parents=True, exist_ok=True)
    partial = output.with_name(output.name + '.part')
    try:
        export(model, partial, opset)
        diff = self_check(partial, model)
        if not diff <= CHECK_TOL:
            raise ValueError(f"the exported {output.name} differs from PyTorch by {diff:.2e} (over {CHECK_TOL:g}) "
                             f"under ONNX Runtime; no file written")
        partial.replace(output)
    finally:
        partial.unlink(missing_ok=True)
    return diff


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--weights', type=Path, required=True, help='checkpoint (official or this project\'s)')
    parser.add_argument('--output', type=Path, required=True, help='the .onnx file to write')
    parser.add_argument('--opset', type=int, default=OPSET, help=f'ONNX opset (default {OPSET})')
    args = parser.parse_args(argv)
    diff = export_checked(args.weights, args.output, args.opset)
    size = args.output.stat().st_size / 2 ** 20
    print(f"wrote {args.output} ({size:.1f} MB); ONNX Runtime vs PyTorch: max abs difference {diff:.1e}")


if __name__ == '__main__':
    sys.exit(run_main(main, sys.argv[1:]))
