"""Video to any size: decode with PyAV, render each frame as an image, encode, and copy every other stream.

    python inference.py --input=clip.mp4 --size=[1080,1920]                    # results/inference/clip_1080x1920.mp4
    python inference.py --input=clip.mkv --scale=2 --codec=ffv1 --pix_fmt=yuv444p   # lossless
    python inference.py --input=clip.mp4 --scale=2 --frames=[0,48]             # a preview of the first 48 frames

Frames stream: decode, convert to RGB (the frame's own colour matrix and range), render through the
image path (cli.render_window), round to 8 bits (16 for sources deeper than 8), convert to --pix_fmt,
encode; decoding and encoding run in threads of their own, DEPTH frames from the render on each side.
Memory holds those few frames plus the encoder's look-ahead, never the clip. Audio, subtitle and data packets are copied as they are, with their timestamps; the video
keeps each frame's timestamp (variable frame rate included), its frame rate, rotation (display matrix)
and colour tags. A pixel format with subsampled chroma (yuv420p, yuv422p) needs even sides: an odd
side is rounded up to the next even number, with a warning. The output is written to a temporary file
beside it and renamed when complete (files.replacing): an interrupted run leaves nothing at the
output path, and a rerun starts that video over. Under torchrun a video is cut into segments (frame
ranges, each decoded from the keyframe before it) that several processes render and the first joins:
the second half of this file. See docs/video.md.
"""
import functools
import hashlib
import heapq
import itertools
import queue
import threading
import warnings
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager, suppress
from fractions import Fraction
from pathlib import Path
from types import SimpleNamespace

import av
import torch
from av.video.reformatter import Interpolation
from tqdm import tqdm

from files import NO_SPACE, DiskFull, disk_full, replacing
from imgproc import image_to_tensor, quantize

VIDEO_SUFFIXES = ('.mp4', '.mkv', '.mov', '.webm', '.avi')
COPIED = ('audio', 'subtitle', 'data')  # stream types copied packet for packet
X26X_PRESETS = ('ultrafast', 'superfast', 'veryfast', 'faster', 'fast', 'medium', 'slow', 'slower', 'veryslow',
                'placebo')
TRUNCATED = 0.5  # s: packets that end this much before the stated duration mean a cut-off file
UNSPECIFIED, BT601 = 2, 6  # FFmpeg's AVColorSpace values: unspecified, SMPTE 170M (BT.601)

ACCURATE = Interpolation.BILINEAR | Interpolation.ACCURATE_RND  # chroma filter; rounding, not truncation
Render = Callable[[torch.Tensor, tuple[int, int]], torch.Tensor]  # (1, 3, h, w) in [0, 1] -> (1, 3, H, W)


def is_video(path: str | Path) -> bool:
    return Path(path).suffix.lower() in VIDEO_SUFFIXES


def check_encoder(codec: str, pix_fmt: str, preset: str) -> None:
    """Refuse a codec PyAV's FFmpeg cannot encode video with, a pixel format it does not take, or an
    x264/x265 preset it does not know."""
    try:
        encoder = av.codec.Codec(codec, 'w')
    except (av.FFmpegError, ValueError):
        raise ValueError(f"codec {codec!r} is not a video encoder here (try libx264, libx265, libvpx-vp9 "
                         f"or ffv1)") from None
    if encoder.type != 'video':
        raise ValueError(f"codec {codec!r} is not a video encoder")
    formats = [f.name for f in encoder.video_formats]
    if pix_fmt not in formats:
        raise ValueError(f"pix_fmt {pix_fmt!r} is not one that {codec} takes: {', '.join(formats)}")
    if codec in ('libx264', 'libx265') and preset not in X26X_PRESETS:
        raise ValueError(f"preset {preset!r}: {codec} knows {', '.join(X26X_PRESETS)}")


def video_stream(container, source: Path):
    if not container.streams.video:
        raise ValueError(f"{source}: no video stream")
    return container.streams.video[0]


def frame_size(source: Path) -> tuple[int, int]:
    """(height, width) of the first video stream of `source`, from its header."""
    with opened(source) as container:
        stream = video_stream(container, source)
        return stream.codec_context.height, stream.codec_context.width


def even_size(size: tuple[int, int], pix_fmt: str, source: Path) -> tuple[int, int]:
    """`size` with each side whose chroma `pix_fmt` subsamples rounded up to an even number (x264, x265
    and VP9 refuse odd ones there), saying so in a warning."""
    fmt = av.VideoFormat(pix_fmt)  # a chroma plane half as tall (wide) as 2 luma rows (columns): subsampled
    even = (fmt.chroma_height(2) == 1 and size[0] % 2, fmt.chroma_width(2) == 1 and size[1] % 2)
    if not any(even):
        return size
    rounded = (size[0] + even[0], size[1] + even[1])
    warnings.warn(f"{source}: {pix_fmt} needs even sides: the {size[0]}x{size[1]} output is made "
                  f"{rounded[0]}x{rounded[1]}", stacklevel=2)
    return rounded


@contextmanager
def opened(source: Path):
    """av.open(source) for reading, a file FFmpeg cannot open a ValueError that names it."""
    try:
        container = av.open(str(source))
    except av.FFmpegError as e:
        raise ValueError(f"{source}: not a readable video ({e.strerror or e})") from None
    with container:
        yield container


def video_packets(source: Path) -> list[tuple[int | None, bool]]:
    """(presentation timestamp, None where the demuxer has none; keyframe) of each packet of the video, in
    file (decode) order, from the packets (no decoding). A file whose packets end over TRUNCATED s before the
    duration its header states is refused."""
    with opened(source) as container:
        stream, found, ends = video_stream(container, source), [], [0]
        for packet in container.demux():
            if packet.size and packet.stream.index == stream.index:
                found.append((packet.pts, packet.is_keyframe))
            if packet.size and packet.pts is not None:
                ends.append((packet.pts + packet.duration) * packet.time_base)
        stated = (container.duration or 0) / av.time_base + (container.start_time or 0) / av.time_base
    if max(ends) + TRUNCATED < stated:
        raise ValueError(f"{source}: its streams end at {float(max(ends)):.2f} s of the {stated:.2f} s its header "
                         f"states: the file is truncated")
    return found


def frame_times(source: Path) -> list[int]:
    """The presentation timestamps of the video's frames in order (video_packets, sorted)."""
    return sorted(pts for pts, _ in video_packets(source) if pts is not None)


def chosen_frames(times: list[int], frames: list[int], source: Path) -> tuple[int, int | None, int]:
    """The timestamps [start, end) of --frames=[first, last + 1] (end None: to the end; all frames without
    it) and how many frames that is."""
    if not times:
        raise ValueError(f"{source}: the video stream holds no frames")
    first, last = frames or (0, len(times))
    if first >= len(times):
        raise ValueError(f"{source}: frames={frames} starts past its {len(times)} frames")
    return times[first], times[last] if last < len(times) else None, min(last, len(times)) - first


def frame_count(source: Path, frames: list[int]) -> int:
    """The number of frames of `source` (of its part `frames`); a damaged or truncated file is refused."""
    return chosen_frames(frame_times(source), frames, source)[2]


def items(container, video) -> Iterator:
    """The input in file order: each decoded frame of `video` and each packet of the copied streams."""
    for packet in container.demux():
        if packet.stream.index == video.index:
            yield from packet.decode()  # the final empty packet flushes the decoder
        elif packet.stream.type in COPIED and packet.size:
            yield packet


def deep_format(codec: str, pix_fmt: str) -> str:
    """The 10-bit form of pix_fmt for a source deeper than 8 bits where `codec` has it, else pix_fmt
    with a warning."""
    if av.VideoFormat(pix_fmt).components[0].bits > 8:
        return pix_fmt
    if pix_fmt + '10le' in [f.name for f in av.codec.Codec(codec, 'w').video_formats]:
        return pix_fmt + '10le'
    warnings.warn(f"{codec} has no 10-bit form of {pix_fmt}: the output has 8 bits", stacklevel=2)
    return pix_fmt


def add_video(out, video, first: av.VideoFrame, size: tuple[int, int], cfg: SimpleNamespace):
    """The output's video stream: cfg's codec at `size`, in the input's time base and frame rate, with its
    rotation and colour tags; the 10-bit form of cfg.pix_fmt for a source deeper than 8 bits."""
    pix_fmt = deep_format(cfg.codec, cfg.pix_fmt) if first.format.components[0].bits > 8 else cfg.pix_fmt
    options = {'crf': str(cfg.crf), 'preset': cfg.preset} if cfg.codec in ('libx264', 'libx265') else \
        {'crf': str(cfg.crf), 'b': '0'} if cfg.codec == 'libvpx-vp9' else {}
    try:
        stream = out.add_stream(cfg.codec, rate=video.average_rate or video.guessed_rate, options=options)
    except ValueError as e:  # the container cannot hold this codec
        raise ValueError(f"{video.container.name}: {e}; choose another --codec (.webm: libvpx-vp9)") from None
    stream.height, stream.width, stream.pix_fmt = *size, pix_fmt
    stream.time_base = stream.codec_context.time_base = video.time_base  # each frame keeps its timestamp
    context = stream.codec_context
    context.color_range, context.color_primaries, context.color_trc = \
        first.color_range, first.color_primaries, first.color_trc
    context.colorspace = first.colorspace if first.colorspace != UNSPECIFIED else BT601  # as decoded: swscale's default
    if first.rotation:
        stream.set_display_rotation(first.rotation)
    return stream


def first_frame(source: Path) -> av.VideoFrame:
    """The first decoded frame: its rotation, colour tags and bit depth set up the output."""
    with opened(source) as container:
        for frame in container.decode(video_stream(container, source)):
            return frame
    raise ValueError(f"{source}: no frame of its video stream could be decoded")


def to_tensor(frame: av.VideoFrame, deep: bool) -> torch.Tensor:
    """A decoded frame as a (1, 3, h, w) RGB tensor in [0, 1], converted by its own matrix and range."""
    rgb = frame.to_ndarray(format='rgb48le' if deep else 'rgb24', src_color_range=frame.color_range)
    return image_to_tensor(rgb)[None]


def to_frame(sr: torch.Tensor, deep: bool, context) -> av.VideoFrame:
    """A rendered (1, 3, H, W) image rounded to 8 bits (16 when deep) and converted to the encoder's
    pixel format by its colour matrix and range, with accurate rounding."""
    rgb = av.VideoFrame.from_ndarray(quantize(sr, 16 if deep else 8), format='rgb48le' if deep else 'rgb24')
    return rgb.reformat(format=context.pix_fmt, dst_colorspace=context.colorspace,
                        dst_color_range=context.color_range, interpolation=ACCURATE)


def copy_streams(container, out) -> dict:
    """{input stream index: output stream} for every audio, subtitle and data stream; others are left out."""
    others = [f"{s.type} stream {s.index}" for s in container.streams if s.type not in (*COPIED, 'video')]
    if others:
        warnings.warn(f"{container.name}: not copied: {', '.join(others)}", stacklevel=2)
    copies = {}
    for s in (s for s in container.streams if s.type in COPIED):
        try:
            copies[s.index] = out.add_stream_from_template(s)
        except ValueError as e:  # the output's container cannot hold this codec
            raise ValueError(f"{container.name}: its {s.type} stream cannot be copied ({e}): write the input's "
                             f"container ({Path(container.name).suffix})") from None
    return copies


def in_part(packet: av.Packet, start: Fraction, end: Fraction | None, offset: Fraction) -> bool:
    """Whether a copied packet falls in the part [start, end) seconds (--frames); if so its timestamps
    move back by `offset` seconds, as the part's frames do."""
    when = packet.pts if packet.pts is not None else packet.dts
    t = when * packet.time_base if when is not None else start
    if t < start or (end is not None and t >= end):
        return False
    step = round(offset / packet.time_base)
    packet.pts = None if packet.pts is None else packet.pts - step
    packet.dts = None if packet.dts is None else packet.dts - step
    return True


def encode(out, stream, sr: torch.Tensor, deep: bool, source: av.VideoFrame, pts: int) -> None:
    """Encode the render `sr` of the decoded frame `source` at `pts` (in the source's time base, its duration)."""
    frame = to_frame(sr, deep, stream.codec_context)
    frame.pts, frame.time_base, frame.duration = pts, source.time_base, source.duration
    out.mux(stream.encode(frame))


DEPTH = 2  # frames in flight on each side of the render (decoded ahead, waiting to be encoded); 0: no threads


def ahead(found: Iterator, depth: int | None = None) -> Iterator:
    """The items of `found`, produced by a thread of its own up to `depth` (DEPTH) ahead of the consumer; its
    exception is raised here. Closing the generator stops the thread (before the container it reads closes)."""
    depth = DEPTH if depth is None else depth
    if not depth:
        yield from found
        return
    box, stop, end = queue.Queue(depth), threading.Event(), object()

    def produce() -> None:
        try:
            for item in found:
                while not stop.is_set():
                    try:
                        box.put((item, None), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():  # the consumer has closed
                    return
            box.put((end, None))
        except BaseException as e:  # handed to the consumer
            box.put((end, e))
    thread = threading.Thread(target=produce, name='video-decode', daemon=True)
    thread.start()
    try:
        while (got := box.get())[0] is not end:
            yield got[0]
        if got[1] is not None:
            raise got[1]
    finally:
        stop.set()
        while thread.is_alive():  # a producer blocked on a full queue sees the stop
            with suppress(queue.Empty):
                box.get(timeout=0.1)
        thread.join()


@contextmanager
def behind(depth: int | None = None):
    """A later(call) that runs the calls handed to it in order in a thread of its own, at most `depth`
    (DEPTH) waiting; the block ends once every call has run, and the first call's exception is raised in
    the caller (at a later hand-over, or at the end). With depth 0 each call runs at once."""
    depth = DEPTH if depth is None else depth
    if not depth:
        yield lambda call: call()
        return
    jobs, failed = queue.Queue(depth), []

    def work() -> None:
        while (call := jobs.get()) is not None:
            try:
                if not failed:  # after a failure the rest are dropped
                    call()
            except BaseException as e:
                failed.append(e)
    thread = threading.Thread(target=work, name='video-encode', daemon=True)
    thread.start()

    def later(call) -> None:
        if failed:
            raise failed[0]
        jobs.put(call)
    try:
        yield later
    finally:
        jobs.put(None)
        thread.join()
    if failed:
        raise failed[0]


def transcode(source: Path, out, render: Render, size: tuple[int, int], cfg: SimpleNamespace,
              progress: bool) -> int:
    """Write `source`'s frames cfg.frames, rendered at `size`, and its other streams into the open
    container `out`; returns the number of frames written."""
    times, first = frame_times(source), first_frame(source)
    start, end, wanted = chosen_frames(times, cfg.frames, source)
    deep = first.format.components[0].bits > 8
    with opened(source) as container:
        video = video_stream(container, source)
        stream, copies = add_video(out, video, first, size, cfg), copy_streams(container, out)
        offset = start - times[0]  # a part (--frames) starts where the whole did
        seconds = [t * video.time_base if t is not None else None for t in (start, end, offset)]  # the part
        with tqdm(total=wanted, unit='frame', disable=not progress, desc=source.name, leave=False) as bar:
            work = timed(items(container, video), times, start, end, deep)
            done = pipeline(out, stream, lambda lr: render(lr, size), deep, work, offset,
                            lambda packet: kept(packet, copies, cfg.frames and seconds), bar.update)
    if done < wanted:
        raise ValueError(f"{source}: only {done} of its {wanted} frames could be decoded: the file is damaged")
    return done


def timed(found: Iterator, times: list[int], start: int, end: int | None, deep: bool) -> Iterator[tuple]:
    """(item, pts, RGB tensor) for the decoded frames and copied packets of `found` in order: a packet's pts
    and tensor None, a frame's pts its timestamp and its tensor None before `start` (not rendered); ends at
    the first frame at or after `end`. Frames leave the decoder in presentation order: the k-th has the
    k-th packet time (as FFmpeg's best-effort timestamps; AVI's B-frames carry no times of their own)."""
    decoded = 0
    for item in found:
        if isinstance(item, av.Packet):
            yield item, None, None
            continue
        pts, decoded = times[min(decoded, len(times) - 1)], decoded + 1
        if end is not None and pts >= end:
            return
        yield item, pts, to_tensor(item, deep) if pts >= start else None


def pipeline(out, stream, paint: Callable[[torch.Tensor], torch.Tensor], deep: bool, work: Iterator[tuple],
             offset: int, copy: Callable[[av.Packet], bool], on_frame: Callable[[], None]) -> int:
    """Render the frames of `work` (timed's items) with paint(lr) and encode them (deep: from 16-bit RGB) into
    `stream` at their time less `offset`, muxing the packets that copy(packet) keeps, in order; returns the
    number of frames. Decoding (with the conversion to RGB) and encoding (from RGB, with the muxing) each
    run in a thread of their own, DEPTH items from the render: on a fast device the model need not wait."""
    done = 0
    with behind() as later, closing(ahead(work)) as found:
        for item, pts, lr in found:
            if pts is None:
                if copy(item):
                    later(functools.partial(out.mux, item))
            elif lr is not None:
                later(functools.partial(encode, out, stream, paint(lr), deep, item, pts - offset))
                done += 1
                on_frame()
        later(lambda: out.mux(stream.encode(None)))  # the encoder's last frames
    return done


def kept(packet: av.Packet, copies: dict, part: list | None) -> bool:
    """Whether a packet of a copied stream goes into the output: all do, or those of `part` (in_part's
    start, end and offset in seconds), moved back with it; a kept one is given its output stream."""
    if part and not in_part(packet, *part):
        return False
    packet.stream = copies[packet.stream.index]
    return True


def upscale_video(render: Render, source: Path, target: Path, size: tuple[int, int], cfg: SimpleNamespace,
                  progress: bool) -> str:
    """Render the video at `source` at `size` (even_size: rounded for the pixel format) into `target`,
    whole or not at all; returns the line that says so. FFmpeg's failures name the file."""
    size = even_size(size, cfg.pix_fmt, source)
    with writing(source, target) as out:
        done = transcode(source, out, render, size, cfg, progress)
    return f"{source} -> {target} ({size[0]}x{size[1]}, {done} frames)"


@contextmanager
def writing(source: Path, target: Path, kept: str = ''):
    """An output container for `target`, written to a temporary file renamed into place when the block ends
    without an error; FFmpeg's failures name the file, and a full disk's add `kept` (what a rerun reuses)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        # bitexact: no random Matroska segment ID, so a rerun writes the same bytes
        with replacing(target) as tmp, av.open(str(tmp), 'w', options={'fflags': '+bitexact'}) as out:
            yield out
    except DiskFull as e:  # replacing's: it names the file
        if kept:
            raise DiskFull(f"{e}; {kept}") from None
        raise
    except av.FFmpegError as e:
        if e.errno in NO_SPACE:
            raise disk_full(target, e, "; nothing was written" + (f"; {kept}" if kept else "")) from None
        raise ValueError(f"{source}: {e.strerror or e} (writing {target})") from None


# ---- one video in segments: frame ranges rendered by several processes, then joined into one file

def entry_points(packets: list[tuple[int | None, bool]]) -> list[int]:
    """The packets (by position in decode order) that decoding can start at and give the frames a decode
    from the start gives: keyframes that no other packet crosses (none before shows later, none after
    earlier: a closed GOP), so that the position is also the frame's index in presentation order. 0
    always; only 0 where a packet has no timestamp."""
    if any(pts is None for pts, _ in packets):
        return [0]
    later = [packets[-1][0]] if packets else []  # the smallest pts from each position to the end
    for pts, _ in reversed(packets[:-1]):
        later.append(min(pts, later[-1]))
    later.reverse()
    entries, shown = [0], None  # shown: the largest pts before the position
    for i, (pts, key) in enumerate(packets):
        if i and key and shown < pts <= later[i]:
            entries.append(i)
        shown = pts if shown is None else max(shown, pts)
    return entries


def decoded_from(container, video, entry: int) -> Iterator[av.VideoFrame]:
    """The video's frames in presentation order from the packet at position `entry` (an entry point) on:
    the packets before it are read but not decoded."""
    skipped = 0
    for packet in container.demux(video):
        if skipped < entry:
            skipped += bool(packet.size)
            continue
        yield from packet.decode()  # the final empty packet flushes the decoder


def encode_part(source: Path, out, render: Render, size: tuple[int, int], cfg: SimpleNamespace,
                part: tuple[int, int], on_frame: Callable[[], None]) -> int:
    """Write the frames part = [first, end) (indices in presentation order) of `source`, rendered at
    `size`, as the video stream alone of the open container `out`, with the timestamps a whole run gives
    them. Decoding starts at the entry point at or before `first`; on_frame() after each frame."""
    packets = video_packets(source)
    times, first = sorted(pts for pts, _ in packets), first_frame(source)
    offset = chosen_frames(times, cfg.frames, source)[0] - times[0]  # a part (--frames) starts where the whole did
    entry = max(e for e in entry_points(packets) if e <= part[0])
    deep = first.format.components[0].bits > 8
    with opened(source) as container:
        video = video_stream(container, source)
        stream = add_video(out, video, first, size, cfg)
        work = timed(decoded_from(container, video, entry), times[entry:], times[part[0]],
                     times[part[1]] if part[1] < len(times) else None, deep)
        done = pipeline(out, stream, lambda lr: render(lr, size), deep, work, offset, bool, on_frame)
    if done < part[1] - part[0]:
        raise ValueError(f"{source}: only {done} of the {part[1] - part[0]} frames from frame {part[0]} could be "
                         f"decoded: the file is damaged")
    return done


def joinable(target: Path) -> bool:
    """Whether segments can be joined into `target`: a video in a container that keeps timestamps (AVI
    counts frames and keeps none: an AVI output is rendered whole by one process)."""
    return is_video(target) and target.suffix.lower() != '.avi'


def segments_folder(source: Path, target: Path, cfg: SimpleNamespace) -> Path:
    """The hidden folder beside `target` that keeps its segments until they are joined, named by what makes
    them: the source (path, size, modification time) and the settings; a changed one gives another folder."""
    stat, skip = source.stat(), ('threads', 'overwrite', 'recursive', 'input', 'output')
    made = repr((str(source.resolve()), stat.st_size, stat.st_mtime_ns,
                 sorted((k, v) for k, v in vars(cfg).items() if k not in skip)))
    return target.with_name(f'.{target.name}.{hashlib.sha256(made.encode()).hexdigest()[:12]}.segments')


def segment_path(folder: Path, part: tuple[int, int], suffix: str) -> Path:
    return folder / f'{part[0]:07d}-{part[1]:07d}{suffix}'


def render_segment(render: Render, source: Path, segment: Path, size: tuple[int, int], cfg: SimpleNamespace,
                   part: tuple[int, int], on_frame: Callable[[], None] = lambda: None) -> int:
    """Render frames `part` of `source` into the file `segment` (written whole or not at all), unless it is
    there already with as many frames (a rerun); returns the number of frames rendered now."""
    if segment.is_file() and segment_frames(segment) == part[1] - part[0]:
        return 0
    size = even_size(size, cfg.pix_fmt, source)
    with writing(source, segment, "the finished segments are kept for a rerun") as out:
        return encode_part(source, out, render, size, cfg, part, on_frame)


def segment_frames(segment: Path) -> int:
    """How many video packets (frames) the segment file holds; 0 for one that does not read."""
    try:
        with av.open(str(segment)) as container:
            return sum(1 for packet in container.demux(video=0) if packet.size)
    except (av.FFmpegError, IndexError):
        return 0


def segment_packets(segments: list[Path], stream) -> Iterator[av.Packet]:
    """The video packets of the segments in order, for `stream`, their decoding times kept increasing: an
    encoder with B-frames starts each segment's times a frame or two before its first frame, which can
    reach back to the previous segment's last; those move on by one tick (still before their frame's time).
    Where the segment's container keeps no decoding times (Matroska: the demuxer guesses some), each
    packet gets the earliest presentation time from it on: never after its own, never before an earlier one."""
    last = None
    for path in segments:
        times, kept = segment_times(path)
        earliest = list(itertools.accumulate(reversed(times), min))[::-1]
        with av.open(str(path)) as container:
            for packet, dts in zip((p for p in container.demux(video=0) if p.size), earliest):
                packet.dts = packet.dts if kept else dts
                if kept and last is not None and packet.dts <= last:
                    packet.dts = last + 1
                last = packet.dts
                packet.stream = stream
                yield packet


def segment_times(segment: Path) -> tuple[list[int], bool]:
    """The presentation timestamps of the segment's video packets in file order, and whether every packet
    has a decoding time."""
    with av.open(str(segment)) as container:
        found = [(packet.pts, packet.dts) for packet in container.demux(video=0) if packet.size]
    return [pts for pts, _ in found], all(dts is not None for _, dts in found)


def join_segments(source: Path, segments: list[Path], target: Path, cfg: SimpleNamespace) -> str:
    """Join the video segments, in order, into `target` (whole or not at all), with the other streams of
    `source` copied as a whole run copies them (cfg.frames: the packets of the part's time); returns the
    line that says so."""
    times = frame_times(source)
    start, end, wanted = chosen_frames(times, cfg.frames, source)
    with writing(source, target, "the segments are kept for a rerun") as out, \
            opened(source) as container, av.open(str(segments[0])) as head:
        template = head.streams.video[0]
        stream = out.add_stream_from_template(template)
        video = video_stream(container, source)
        stream.time_base = template.time_base
        stream.codec_context.framerate = video.average_rate or video.guessed_rate  # as add_video: the container's rate
        copies = copy_streams(container, out)
        seconds = [t * video.time_base if t is not None else None for t in (start, end, start - times[0])]
        done = 0
        for packet in heapq.merge(copied_packets(container, copies, cfg.frames and seconds),
                                  segment_packets(segments, stream), key=when):
            done += packet.stream.type == 'video'
            out.mux(packet)
        if done != wanted:  # checked before the rename
            raise ValueError(f"{target}: its segments hold {done} of the {wanted} frames")
    return f"{source} -> {target} ({template.height}x{template.width}, {done} frames, {len(segments)} segments)"


def copied_packets(container, copies: dict, part: list | None) -> Iterator[av.Packet]:
    """The packets of the copied streams, for their output streams: all, or those of `part` (in_part's
    start, end and offset in seconds), moved back with it."""
    for packet in container.demux([container.streams[i] for i in copies]) if copies else []:  # [] demuxes all
        if packet.size and kept(packet, copies, part):
            yield packet


def when(packet: av.Packet) -> Fraction:
    """A packet's decoding time in seconds (its presentation time where it has no decoding time)."""
    t = packet.dts if packet.dts is not None else packet.pts
    return (t or 0) * packet.time_base
