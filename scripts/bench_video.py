"""Video: inference.py's video path in frames per second and the pipeline's share of the time; memory and
speed over a long clip; the decode/encode overlap; one video split over processes.

    python scripts/bench_video.py --frames=2                  # frames/s, 360p -> 720p and 480p -> 1080p
    python scripts/bench_video.py --memory --frames=3000      # resident memory and frames/s along the clip
    python scripts/bench_video.py --overlap --render_s=0.05   # the pipeline's share, threads on and off
    python scripts/bench_video.py --split --frames=60         # 2 processes x 1 thread against 1 x 1

By default runs video.upscale_video (inference.py's video path) on clips of --frames frames made from a
real Set14 image sliding by 2 px a frame (libx264, crf 18), 360p -> 720p and 480p -> 1080p, with LIIF's
fast path (fp32) and ONNX Runtime, encoding libx264 yuv420p crf 18 preset medium. The model's time is the
render calls'; the rest (decode, colour conversion both ways, rounding, encode, mux) is the pipeline's own
cost, given as a share of the model's time. The first frame's encoder start-up counts in it.

--memory runs video.upscale_video on a 64x48 clip of the same kind with a stand-in render (bilinear, x2)
and reads /proc/self/statm at each frame. --overlap stands in for a fast device: each render sleeps
--render_s (the GIL released, as while a GPU works) and resizes bilinearly, on a 640x360 clip to 1280x720,
libx264 yuv420p crf 18 preset medium; it times the frames with video.DEPTH = 0 (decode, render, encode one
after the other) and 2 (decoding and encoding in threads of their own), alternately. --split times
inference.py on a 96x64 clip at x2 (official weights, ffv1) as 1 process of 1 thread and as torchrun's 2
processes of 1 thread, each also on its first frame alone (--frames=[0,1]: the start-up), alternately; the
split's time is the difference.
"""
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import av
import cv2
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import settings
import video
from cli import run_main
from imgproc import load_uint8
from onnx_model import WINDOW_QUERIES, OnnxModel, export
from scripts.benchlib import ROOT, WEIGHTS, benchmark_root, header, load_model, parser, setup

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


def run_rates(args, device: torch.device) -> None:
    """Frames per second of the fast path and ONNX Runtime, and the pipeline's share, at CASES."""
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
                video.upscale_video(render, clip, folder / f'out_{lr_size[0]}p_{name}.mp4', size, cfg, progress=False)
            total, n = time.perf_counter() - start, args.frames
            print(f"| {lr_size[1]}x{lr_size[0]} | {size[1]}x{size[0]} | {name} | {n / total:.4f} | {spent[0] / n:.1f} "
                  f"| {(total - spent[0]) / n:.2f} | {100 * (total - spent[0]) / spent[0]:.1f} % |", flush=True)


def stand_in(memory: list, sleep: float = 0.0):
    """A render that records the resident memory (MB) and its own time, sleeps `sleep` s and resizes."""
    def render(lr: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        start = time.perf_counter()
        memory.append(int(Path('/proc/self/statm').read_text().split()[1]) * os.sysconf('SC_PAGE_SIZE') / 2 ** 20)
        time.sleep(sleep)
        sr = torch.nn.functional.interpolate(lr, size=size, mode='bilinear', align_corners=False)
        render.seconds += time.perf_counter() - start
        return sr
    render.seconds = 0.0
    return render


def upscale(clip: Path, size: tuple[int, int], render, folder: Path, *args: str) -> float:
    """Seconds for video.upscale_video of `clip` at `size`."""
    cfg = settings.parse([f'--input={clip}', *args], 'inference')
    start = time.perf_counter()
    video.upscale_video(render, clip, folder / f'out{clip.suffix}', size, cfg, progress=False)
    return time.perf_counter() - start


def run_memory(folder: Path, frames: int) -> None:
    """Resident memory and frames/s along a long small clip (a stand-in render: bilinear x2)."""
    clip = video_clip(folder / 'small.mp4', (48, 64), frames)
    seen, stamps = [], []
    render = stand_in(seen)
    timed = lambda lr, size: (stamps.append(time.perf_counter()), render(lr, size))[1]  # noqa: E731
    upscale(clip, (96, 128), timed, folder, '--codec=ffv1')
    steps = np.diff(stamps)
    tenth = len(steps) // 10
    print(f"{frames} frames 64x48 -> 128x96 ffv1: resident {seen[99]:.1f} MB after 100 frames, at most "
          f"{max(seen[100:]):.1f} MB after (+{max(seen[100:]) - seen[99]:.2f}), {seen[-1]:.1f} MB at the end")
    print("frames/s by tenths of the clip:", ' '.join(f'{1 / steps[i * tenth:(i + 1) * tenth].mean():.0f}'
                                                     for i in range(10)))


def run_overlap(folder: Path, frames: int, sleep: float, repeats: int) -> None:
    """The pipeline's own share without (video.DEPTH = 0) and with the decode and encode threads, alternately."""
    clip = video_clip(folder / 'clip.mp4', (360, 640), frames)
    rows = {0: [], 2: []}
    for _ in range(repeats):
        for depth in rows:
            video.DEPTH, render = depth, stand_in([], sleep)
            wall = upscale(clip, (720, 1280), render, folder)
            rows[depth].append(((wall - render.seconds) / frames, render.seconds / frames))
    for depth, found in rows.items():
        pipeline, model = np.median([p for p, _ in found]), np.median([m for _, m in found])
        print(f"DEPTH={depth}: render {model:.3f} s/frame, pipeline's own {pipeline:.3f} s/frame "
              f"({100 * pipeline / model:.0f} % of the render), {1 / (pipeline + model):.1f} frames/s")


def run_split(folder: Path, frames: int, repeats: int) -> None:
    """inference.py on one clip: 1 process of 1 thread against torchrun's 2, start-up (the first frame alone) subtracted."""
    clip = video_clip(folder / 'split.mkv', (64, 96), frames)
    env = {**os.environ, 'OMP_NUM_THREADS': '1'}
    one = [sys.executable, 'inference.py', '--threads=1']
    two = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2', 'inference.py']
    times = {}
    for _ in range(repeats):
        for name, launch in (('1 process', one), ('2 processes', two)):
            for part in ([], ['--frames=[0,1]']):
                start = time.perf_counter()
                subprocess.run([*launch, f'--input={clip}', f'--output={folder}/out.mkv', f'--weights={WEIGHTS}',
                                '--scale=2', '--codec=ffv1', '--device=cpu', '--overwrite=True', *part], cwd=ROOT,
                               env=env, check=True, capture_output=True)
                times.setdefault((name, bool(part)), []).append(time.perf_counter() - start)
    work = {name: np.median(times[name, False]) - np.median(times[name, True]) for name in ('1 process', '2 processes')}
    for name in work:
        print(f"{name}: {np.median(times[name, False]):.1f} s in all, {np.median(times[name, True]):.1f} s for the "
              f"first frame alone: {work[name]:.1f} s for the other {frames - 1} frames")
    print(f"2 processes / 1 process: {work['2 processes'] / work['1 process']:.2f}")


def main(argv: list[str]) -> None:
    p = parser(__doc__)
    for subject in ('--memory', '--overlap', '--split'):
        p.add_argument(subject, action='store_true')
    p.add_argument('--frames', type=int, default=0, help="frames of a clip (default: 3; --memory 3000, --overlap "
                   "20, --split 60)")
    p.add_argument('--render_s', type=float, default=0.05, help="--overlap: the stand-in render's sleep")
    args = p.parse_args(argv)
    if args.frames < 0 or args.render_s < 0:
        raise ValueError("--frames and --render_s must be >= 0")
    device = setup(args)
    print(f"# load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    if not (args.memory or args.overlap or args.split):
        args.frames = args.frames or 3
        run_rates(args, device)
    with tempfile.TemporaryDirectory() as tmp:
        if args.memory:
            run_memory(Path(tmp), args.frames or 3000)
        if args.overlap:
            run_overlap(Path(tmp), args.frames or 20, args.render_s, args.repeats)
        if args.split:
            run_split(Path(tmp), args.frames or 60, args.repeats)
    print(f"# load average at the end {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == '__main__':
    sys.exit(run_main(main, sys.argv[1:]))
