"""Video: inference.py's video path in frames per second, and the pipeline's own share of the time.

    python scripts/bench_video.py --frames=2

Runs video.upscale_video (inference.py's video path) on clips of --frames frames made from a real Set14
image sliding by 2 px a frame (libx264, crf 18), 360p -> 720p and 480p -> 1080p, with LIIF's fast path
(fp32) and ONNX Runtime, encoding libx264 yuv420p crf 18 preset medium. The model's time is the render
calls'; the rest (decode, colour conversion both ways, rounding, encode, mux) is the pipeline's own cost,
given as a share of the model's time. The first frame's encoder start-up counts in it.
"""
import sys
import time
from pathlib import Path

import av
import cv2
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import settings
from cli import run_main
from imgproc import load_uint8
from onnx_model import WINDOW_QUERIES, OnnxModel, export
from scripts.benchlib import benchmark_root, header, load_model, parser, setup
from video import upscale_video

CASES = [((360, 640), (720, 1280)), ((480, 854), (1080, 1920))]  # (input, output) (height, width)


def video_clip(path: Path, size: tuple[int, int], frames: int) -> Path:
    """A libx264 clip of `size` at 25 fps: a real Set14 image resized to it, sliding 2 px a frame."""
    image = cv2.resize(load_uint8(benchmark_root() / 'Set14' / 'HR' / 'baboon.png'), size[::-1],
                       interpolation=cv2.INTER_AREA)
    with av.open(str(path), 'w') as out:
        stream = out.add_stream('libx264', rate=25, options={'crf': '18'})
        stream.height, stream.width, stream.pix_fmt = *size, 'yuv420p'
        for i in range(frames):
            out.mux(stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(np.roll(image, 2 * i, 1)))))
        out.mux(stream.encode(None))
    return path


def main(argv: list[str]) -> None:
    p = parser(__doc__, rounds=False)
    p.add_argument('--frames', type=int, default=3, help="frames per clip")
    args = p.parse_args(argv)
    if args.frames < 1:
        raise ValueError("--frames must be >= 1")
    device = setup(args)
    folder = Path(args.out_dir) / 'video'
    folder.mkdir(parents=True, exist_ok=True)
    model, weights = load_model(device)
    export(model, folder / 'liif.onnx')
    session = OnnxModel(folder / 'liif.onnx', threads=torch.get_num_threads())
    runs = {'fast': lambda lr, size: model.render(lr.to(device), size),
            'onnx': lambda lr, size: torch.from_numpy(session.render(lr.numpy(), size, queries=WINDOW_QUERIES))}
    title = header("inference.py's video path", device)
    print(f"{title}\n{weights}; {args.frames} frame(s) per clip; "
          f"libx264 yuv420p crf 18 preset medium\n")
    print("| input | output | path | frames/s | model s/frame | pipeline s/frame | pipeline / model |")
    print("|---|---|---|---|---|---|---|")
    cfg = settings.parse([], 'inference')  # libx264, yuv420p, crf 18, preset medium
    for lr_size, size in CASES:
        clip = video_clip(folder / f'clip_{lr_size[0]}p.mp4', lr_size, args.frames)
        for name, run in runs.items():
            spent = [0.0]

            def render(lr, out_size, run=run, spent=spent):
                start = time.perf_counter()
                sr = run(lr, out_size)
                spent[0] += time.perf_counter() - start
                return sr
            start = time.perf_counter()
            with torch.no_grad():
                upscale_video(render, clip, folder / f'out_{lr_size[0]}p_{name}.mp4', size, cfg, progress=False)
            total, n = time.perf_counter() - start, args.frames
            print(f"| {lr_size[1]}x{lr_size[0]} | {size[1]}x{size[0]} | {name} | {n / total:.4f} | {spent[0] / n:.1f} "
                  f"| {(total - spent[0]) / n:.2f} | {100 * (total - spent[0]) / spent[0]:.1f} % |", flush=True)


if __name__ == '__main__':
    sys.exit(run_main(main, sys.argv[1:]))
