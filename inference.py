"""Super-resolve one image or a folder of images with LIIF, at any scale or to an exact size.

    python inference.py                                        # figure/example_lr.png at x4
    python inference.py --input=photo.jpg --scale=2.5          # results/inference/photo_x2.5.png
    python inference.py --input=photos/ --scale_hw=[2,3] --output=out/
    python inference.py --input=photo.png --size=[1080,1920] --output=photo_1080p.png
    python inference.py --input=photo.png --scale=16 --window=[0,0,512,512]   # one part of the output
    python inference.py --input=clip.mp4 --size=[1080,1920]   # a video, sound and subtitles copied (docs/video.md)

Output size: with a factor s (or separate height/width factors), an h x w input gives
round(h * s) x round(w * s) (Python's round: halves go to the even integer); --size=[H,W] gives
exactly H x W. Output path: --output (a file for one image, a folder for a folder; one image goes
into a folder given as an existing folder or a path ending in '/'), else
results/inference/<name>_x<scale>.<ext> (<name>_x<sh>x<sw>.<ext>, <name>_<H>x<W>.<ext>), <ext> the
input's own (--format to change it). --recursive=True takes a folder's subfolders too, mirrored.
The output keeps what the input carries (docs/images.md): alpha (rendered by the model, or PIL
bicubic with --alpha=bicubic), one gray channel, 16-bit samples, the ICC profile and EXIF (none
with --strip_metadata=True); EXIF orientation is applied first. What the output format cannot hold
is dropped with one warning line.
Weights ending in .onnx (from scripts/export_onnx.py) run through ONNX Runtime on the CPU, without a
PyTorch model, in graph runs of at most 262144 output pixels, each decoded in 256 blocks of at most
`chunk` queries.
A window [top, left, height, width] writes only that rectangle of the output, at the cost of that
part alone. For a folder, outputs already there are skipped (an interrupted run finishes where it
stopped) unless --overwrite=True; one image is always written. A video (mp4, mkv, mov, webm, avi) is
rendered frame by frame through the same render and written in its own container (video.py).

    torchrun --standalone --nproc_per_node=4 inference.py --input=frames/ --output=out/   # 4 GPUs (or CPU processes)

Under torchrun each process takes a share of the images, balanced by output pixels, on its own GPU
(LOCAL_RANK) or the CPU; the outputs are the same bytes as one process writes (docs/distributed.md).
A video is cut into frame ranges over the processes and joined by the first (docs/video.md).
"""
import functools
import glob
import shutil
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

import settings
from cli import (
    checkpoint_model,
    format_scale,
    load_onnx,
    pick_device,
    render_window,
    run_main,
    set_threads,
    upscaled_alpha,
)
from dataset import IMAGE_SUFFIXES, list_images
from distributed import Team, cut, join
from files import check_writable
from imgproc import (
    FORMATS,
    HOLDS_16_BITS,
    format_holds,
    image_size,
    image_to_tensor,
    quantize,
    read_picture,
    three_to_one,
    write_picture,
)
from precision import check_amp, suggest_amp, use_tf32
from render import check_size, check_window, output_size
from video import (
    VIDEO_SUFFIXES,
    frame_count,
    frame_size,
    is_video,
    join_segments,
    joinable,
    render_segment,
    segment_frames,
    segment_path,
    segments_folder,
    upscale_video,
)
from weights import resolve_weights

DEFAULT_OUTPUT_DIR = Path('results/inference')


def size_tag(cfg: SimpleNamespace) -> str:
    """What the output file name says about its size: 'x4', 'x2x3' or '1080x1920'."""
    if cfg.size:
        return f'{cfg.size[0]}x{cfg.size[1]}'
    if cfg.scale_hw:
        return f'x{format_scale(cfg.scale_hw[0])}x{format_scale(cfg.scale_hw[1])}'
    return f'x{format_scale(cfg.scale)}'


def input_size(source: Path) -> tuple[int, int]:
    """(height, width) of an image or of a video's frames, from the file's header."""
    return frame_size(source) if is_video(source) else image_size(source)


def frames_of(source: Path, cfg: SimpleNamespace) -> int:
    """How many frames `source` gives: a video's (its cfg.frames part), refusing a damaged one and a window
    (a video is rendered whole); 1 for an image."""
    if not is_video(source):
        return 1
    if cfg.window:
        raise ValueError(f"{source}: window applies to images; a video is rendered whole")
    return frame_count(source, cfg.frames)


def plan(cfg: SimpleNamespace) -> list[tuple[Path, Path]]:
    """(input, output) path pairs for cfg.input and cfg.output. A folder input needs a folder output;
    one image goes to cfg.output, or into it with the default name when it is a folder (it exists
    as one, or ends in '/')."""
    source = Path(cfg.input)
    name = output_name(source, cfg)
    into_folder = not cfg.output or cfg.output.endswith(('/', '\\')) or Path(cfg.output).is_dir()
    folder = Path(cfg.output) if cfg.output else DEFAULT_OUTPUT_DIR
    if source.is_dir():
        if not into_folder and Path(cfg.output).suffix:
            raise ValueError(f"output {cfg.output!r} looks like a file name, but input {cfg.input!r} is a folder: "
                             f"give an output folder")
        if cfg.recursive and folder.resolve().is_relative_to(source.resolve()):
            raise ValueError(f"output folder {folder} is inside input folder {source}: with recursive=True a "
                             f"rerun would take the outputs as inputs; give a folder outside it")
        inputs = list_images(source, cfg.recursive, IMAGE_SUFFIXES + VIDEO_SUFFIXES)  # sorted; others skipped, with a warning
        return [(p, folder / p.parent.relative_to(source) / output_name(p, cfg)) for p in inputs]
    if into_folder:
        return [(source, folder / name)]
    if is_video(source):
        if not is_video(cfg.output):
            raise ValueError(f"output {cfg.output!r}: for a video, give a video file name "
                             f"({', '.join(VIDEO_SUFFIXES)}) or a folder (ending in '/')")
        return [(source, Path(cfg.output))]
    if Path(cfg.output).suffix.lower() not in IMAGE_SUFFIXES:
        raise ValueError(f"output {cfg.output!r}: for one input image, give an image file name "
                         f"({', '.join(IMAGE_SUFFIXES)}) or a folder (ending in '/')")
    if cfg.bits == 16 and FORMATS[Path(cfg.output).suffix.lower()] not in HOLDS_16_BITS:
        raise ValueError(f"output {cfg.output!r}: 16-bit output needs a .png or .tif file")
    return [(source, Path(cfg.output))]


def output_name(source: Path, cfg: SimpleNamespace) -> str:
    """<stem>_<size tag> with the input's extension (an image's: cfg.format's when given; a video keeps its
    container)."""
    suffix = '.' + cfg.format if cfg.format and not is_video(source) else source.suffix
    return f"{source.stem}_{size_tag(cfg)}{suffix}"


def checked_size(source: Path, cfg: SimpleNamespace,
                 lr_size: tuple[int, int] | None = None) -> tuple[tuple[int, int], tuple[int, int, int, int]]:
    """The output size for the image at `source` and the window of it to write (cfg.window, else all
    of it), refused when empty, outside the output or beyond cfg.max_pixels. lr_size: the image's
    (height, width) when known (from its header); else the image is read."""
    lr_h, lr_w = lr_size or read_picture(source).rgb.shape[:2]
    try:
        height, width = output_size(lr_h, lr_w, cfg.scale_hw or cfg.scale, cfg.size)
        if height < 1 or width < 1:
            raise ValueError(f"{lr_h}x{lr_w} at {size_tag(cfg)} gives an empty {height}x{width} output")
        window = check_window(cfg.window or None, check_size((height, width)))
    except ValueError as e:
        raise ValueError(f"{source}: {e}") from None
    if window[2] * window[3] > cfg.max_pixels:
        raise ValueError(f"{source}: the {window[2]}x{window[3]} output has {window[2] * window[3]:,} pixels, "
                         f"more than max_pixels={cfg.max_pixels:,}; ask for a smaller size or raise --max_pixels")
    return (height, width), window


def still_to_do(pairs: list[tuple[Path, Path]], cfg: SimpleNamespace) -> list[tuple[Path, Path]]:
    """The (input, output) pairs to work on: for a folder input, those whose output is not there yet
    (all with cfg.overwrite), saying in one line how many are skipped; one image is always written."""
    if cfg.overwrite or not Path(cfg.input).is_dir():
        return pairs
    todo = [(source, target) for source, target in pairs if not target.is_file()]
    if len(todo) < len(pairs):
        print(f"skipping {len(pairs) - len(todo)} of {len(pairs)} images: their outputs are already in "
              f"{pairs[0][1].parent} (--overwrite=True writes them again)")
    return todo


def load(cfg: SimpleNamespace, argv: list[str], weights: Path, device: torch.device):
    """The model `weights` hold, on `device` in eval mode; an .onnx file runs in ONNX Runtime."""
    if weights.suffix.lower() == '.onnx':
        return load_onnx(cfg, argv, weights)
    model = checkpoint_model(cfg, argv, weights, device).eval()
    check_amp(device, cfg.amp)
    use_tf32(cfg.tf32)
    return model


def video_render(model, device: torch.device, cfg: SimpleNamespace):
    """The function that renders a video's frame (the image path, whole)."""
    return functools.partial(render_window, model, device, window=None, cfg=cfg, progress=False)


def video_size(source: Path, cfg: SimpleNamespace) -> tuple[int, int]:
    return checked_size(source, cfg, frame_size(source))[0]


def upscale(model, device: torch.device, source: Path, target: Path, cfg: SimpleNamespace, progress: bool) -> str:
    """Render the image or video at `source` and write it to `target` with what the input carries that its
    format holds (a warning line names the rest); returns the line that says so."""
    if is_video(source):
        return upscale_video(video_render(model, device, cfg), source, target, video_size(source, cfg), cfg, progress)
    picture = read_picture(source)
    lr = image_to_tensor(picture.rgb)[None]
    size, window = checked_size(source, cfg, lr.shape[2:])
    sr = render_window(model, device, lr, size, window, cfg, progress)
    alpha, bits = picture.alpha is not None, cfg.bits or picture.bits
    exif = None if cfg.strip_metadata else picture.exif
    holds = format_holds(target.suffix, (1 if picture.gray else 3) + alpha, bits)
    carried = {'alpha': alpha, '16-bit': bits == 16, 'ICC': picture.icc, 'EXIF': exif}
    lost = [name for name, kept in carried.items() if kept and name not in holds]
    if lost:
        print(f"warning: {target}: {target.suffix} cannot hold the input's {', '.join(lost)}: written without",
              file=sys.stderr)
    bits = bits if '16-bit' in holds else 8
    planes = [quantize(three_to_one(sr) if picture.gray else sr, bits)]
    if alpha and 'alpha' in holds:
        planes.append(quantize(upscaled_alpha(model, device, picture, size, window, cfg), bits))
    write_picture(target, np.concatenate(planes, axis=2), picture.icc if 'ICC' in holds else None,
                  exif if 'EXIF' in holds else None, cfg.quality)
    part = f" window {list(window)}" if cfg.window else ""
    return f"{source} ({lr.shape[2]}x{lr.shape[3]}) -> {target} ({size[0]}x{size[1]}{part})"


def main(argv: list[str]) -> list[Path]:
    """Run inference; returns the output paths this process wrote. Alone, every input is checked before
    any work; under torchrun, see run_share."""
    cfg = settings.parse(argv, 'inference')
    settings.check(cfg, 'inference')
    set_threads(cfg.threads)
    team = join(pick_device(cfg.device), objects_only=True)
    if team.world_size > 1:
        return run_share(cfg, argv, team)
    jobs = still_to_do(plan(cfg), cfg)
    for source, _ in jobs:
        checked_size(source, cfg, frame_size(source) if is_video(source) else None)
        frames_of(source, cfg)
    for folder in dict.fromkeys(target.parent for _, target in jobs):
        check_writable(folder, 'output folder')
    model = load(cfg, argv, resolve_weights(cfg.weights), team.device) if jobs else None
    if isinstance(model, torch.nn.Module) and (len(jobs) > 1 or any(is_video(source) for source, _ in jobs)):
        suggest_amp(team.device, cfg.amp)  # a long job
    for source, target in jobs:
        print(upscale(model, team.device, source, target, cfg, progress=True))
    return [target for _, target in jobs]


def split_work(cfg: SimpleNamespace, world_size: int) -> list[list[tuple]]:
    """Rank 0's plan under torchrun: the images and videos still to do, checked from their headers, in
    world_size shares balanced by output pixels times frames (distributed.cut): an image goes whole to one
    process, a video's frames are cut into contiguous segments, one or more per process. Each share's items
    are (input, output, frames, segment): segment None for a whole input, else (first frame, end, file)."""
    jobs = still_to_do(plan(cfg), cfg)
    windows = [checked_size(source, cfg, input_size(source))[1] for source, _ in jobs]
    for folder in dict.fromkeys(target.parent for _, target in jobs):
        check_writable(folder, 'output folder')
    frames = [frames_of(source, cfg) for source, _ in jobs]
    whole = [not joinable(target) for _, target in jobs]  # images and AVI: weighed by all their frames, never cut
    split = cut([h * w * (n if one else 1) for (_, _, h, w), n, one in zip(windows, frames, whole)],
                [1 if one else n for n, one in zip(frames, whole)], world_size)
    cuts = {i for share in split for i, first, end in share if end - first < frames[i] and not whole[i]}
    folders = {i: segments_folder(*jobs[i], cfg) for i in cuts}
    skip = cfg.frames[0] if cfg.frames else 0  # segments count frames from the video's first

    def piece(i: int, first: int, end: int) -> tuple:
        if i not in cuts:
            return *jobs[i], frames[i], None
        part = (skip + first, skip + end)
        return *jobs[i], end - first, (*part, segment_path(folders[i], part, jobs[i][1].suffix))
    split = [[piece(*item) for item in share] for share in split]
    for i, folder in folders.items():
        keep_segments(folder, jobs[i][1], [p[3] for share in split for p in share if p[1] == jobs[i][1]], cfg.overwrite)
    return split


def keep_segments(folder: Path, target: Path, segments: list[tuple], overwrite: bool) -> None:
    """Make the segments folder of `target`, removing the folders of other settings (and with overwrite
    this one's segments too), and say how many of its `segments` an earlier run has finished."""
    for old in target.parent.glob(f'.{glob.escape(target.name)}.*.segments'):
        if old != folder or overwrite:
            shutil.rmtree(old)
    folder.mkdir(parents=True, exist_ok=True)
    done = sum(segment_frames(path) == end - first for first, end, path in segments)
    if done:
        print(f"{target}: {done} of its {len(segments)} segments were finished by an earlier run and are kept")


def run_share(cfg: SimpleNamespace, argv: list[str], team: Team) -> list[Path]:
    """One process of a torchrun launch: its share of rank 0's split, with one progress bar (rank 0)
    of every process's images, or frames where a video is cut; rank 0 then joins the segments of each cut
    video. A process that fails raises the run's failure flag and reports; the others stop before their
    next image or frame. Images are read (and an unreadable one found) when rendered."""
    split = team.decide(lambda: split_work(cfg, team.world_size))
    pieces = [piece for share in split for piece in share]
    targets = list(dict.fromkeys(piece[1] for piece in pieces))
    if not targets:
        return []
    weights = team.first_on_node(lambda: resolve_weights(cfg.weights))  # fetched once per node when missing
    model = load(cfg, argv, weights, team.device) if split[team.rank] else None
    if team.rank == 0 and isinstance(model, torch.nn.Module):
        suggest_amp(team.device, cfg.amp)
    start, cut_any = time.perf_counter(), any(piece[3] for piece in pieces)
    with team.progress(sum(piece[2] for piece in pieces) if cut_any else len(pieces), 'inference',
                       'frame' if cut_any else 'img'):
        for source, target, frames, segment in split[team.rank]:
            team.check()
            if segment:
                if not render_segment(video_render(model, team.device, cfg), source, segment[2],
                                      video_size(source, cfg), cfg, segment[:2],
                                      lambda: (team.check(), team.finished_one())):
                    team.finished_one(frames)  # finished by an earlier run
            else:
                upscale(model, team.device, source, target, cfg, progress=False)
                team.finished_one(frames if cut_any else 1)
        team.wait()
    joined = join_all(pieces, cfg) if team.rank == 0 else []
    if team.rank == 0:
        print(f"{len(targets)} output(s) written into {targets[0].parent} by {team.world_size} processes in "
              f"{time.perf_counter() - start:.1f} s")
    team.wait()  # a join that fails stops the others with it
    return [target for _, target, _, segment in split[team.rank] if not segment] + joined


def join_all(pieces: list[tuple], cfg: SimpleNamespace) -> list[Path]:
    """Join the segments of each cut video, in order, into its output, then remove its segments folder;
    returns the outputs."""
    segments = {}
    for source, target, _, segment in pieces:
        if segment:
            segments.setdefault((source, target), []).append(segment)
    for (source, target), parts in segments.items():
        files = [path for _, _, path in sorted(parts)]
        join_segments(source, files, target, cfg)
        shutil.rmtree(files[0].parent)
    return [target for _, target in segments]


if __name__ == '__main__':
    sys.exit(run_main(main, sys.argv[1:]))
