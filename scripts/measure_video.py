"""Video: memory and speed over a long clip, the decode/encode overlap, and one video split over processes.

    python scripts/measure_video.py --memory --frames=3000     # resident memory and frames/s along the clip
    python scripts/measure_video.py --overlap --render_s=0.05  # the pipeline's share, threads on and off
    python scripts/measure_video.py --split --frames=60        # 2 processes x 1 thread against 1 x 1

--memory runs video.upscale_video on a 64x48 libx264 clip (Set14 baboon sliding 2 px a frame, as
bench_video.py makes them) with a stand-in render (bilinear, x2) and reads /proc/self/statm at each frame.
--overlap stands in for a fast device: each render sleeps --render_s (the GIL released, as while a GPU
works) and resizes bilinearly, on a 640x360 clip to 1280x720, libx264 yuv420p crf 18 preset medium; it
times the frames with video.DEPTH = 0 (decode, render, encode one after the other) and 2 (decoding and
encoding in threads of their own), alternately. --split times inference.py on a 96x64 clip at x2 (official
weights, ffv1) as 1 process of 1 thread and as torchrun's 2 processes of 1 thread, each also on its first
frame alone (--frames=[0,1]: the start-up), alternately; the split's time is the difference.
"""
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import settings
import video
from cli import ArgumentParser, run_main
from precision import machine_name
from scripts.bench_video import video_clip
from scripts.benchlib import ROOT, WEIGHTS


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


def run(clip: Path, size: tuple[int, int], render, folder: Path, *args: str) -> float:
    """Seconds for video.upscale_video of `clip` at `size`."""
    cfg = settings.parse([f'--input={clip}', *args], 'inference')
    start = time.perf_counter()
    video.upscale_video(render, clip, folder / f'out{clip.suffix}', size, cfg, progress=False)
    return time.perf_counter() - start


def memory(folder: Path, frames: int) -> None:
    clip = video_clip(folder / 'small.mp4', (48, 64), frames)
    seen, stamps = [], []
    render = stand_in(seen)
    timed = lambda lr, size: (stamps.append(time.perf_counter()), render(lr, size))[1]  # noqa: E731
    run(clip, (96, 128), timed, folder, '--codec=ffv1')
    steps = np.diff(stamps)
    tenth = len(steps) // 10
    print(f"{frames} frames 64x48 -> 128x96 ffv1: resident {seen[99]:.1f} MB after 100 frames, at most "
          f"{max(seen[100:]):.1f} MB after (+{max(seen[100:]) - seen[99]:.2f}), {seen[-1]:.1f} MB at the end")
    print("frames/s by tenths of the clip:", ' '.join(f'{1 / steps[i * tenth:(i + 1) * tenth].mean():.0f}'
                                                     for i in range(10)))


def overlap(folder: Path, frames: int, sleep: float, repeats: int) -> None:
    clip = video_clip(folder / 'clip.mp4', (360, 640), frames)
    rows = {0: [], 2: []}
    for _ in range(repeats):
        for depth in rows:
            video.DEPTH, render = depth, stand_in([], sleep)
            wall = run(clip, (720, 1280), render, folder)
            rows[depth].append(((wall - render.seconds) / frames, render.seconds / frames))
    for depth, found in rows.items():
        pipeline, model = np.median([p for p, _ in found]), np.median([m for _, m in found])
        print(f"DEPTH={depth}: render {model:.3f} s/frame, pipeline's own {pipeline:.3f} s/frame "
              f"({100 * pipeline / model:.0f} % of the render), {1 / (pipeline + model):.1f} frames/s")


def split(folder: Path, frames: int, repeats: int) -> None:
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
    p = ArgumentParser(description=__doc__)
    for mode in ('--memory', '--overlap', '--split'):
        p.add_argument(mode, action='store_true')
    p.add_argument('--frames', type=int, default=0, help="frames of the clip (default: 3000, 20, 60)")
    p.add_argument('--render_s', type=float, default=0.05, help="--overlap: the stand-in render's sleep")
    p.add_argument('--repeats', type=int, default=3, help="--overlap, --split: alternating rounds (median)")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    print(f"# {machine_name(torch.device('cpu'))}, torch {torch.__version__}, load average "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    with tempfile.TemporaryDirectory() as tmp:
        if args.memory:
            memory(Path(tmp), args.frames or 3000)
        if args.overlap:
            overlap(Path(tmp), args.frames or 20, args.render_s, args.repeats)
        if args.split:
            split(Path(tmp), args.frames or 60, args.repeats)
        print(f"# load average at the end {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == '__main__':
    sys.exit(run_main(main, sys.argv[1:]))
