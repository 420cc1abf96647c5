"""One video cut into frame ranges: distributed.cut balances the frames, each segment decodes from a
keyframe and renders the frames one process renders, and the joined file equals one process's (ffv1:
frame for frame; x264, x265, VP9: the same timing, streams and tags, frames within the codec's
rate-distortion). In process with a small random LIIF, and under torchrun with two or three processes and
the official weights (a folder of images and videos, --frames, two nodes, a truncated file, a full disk and
a kill of every process, each followed by a rerun that finishes the work)."""
import os
import signal
import subprocess
import time
import uuid
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from test_distributed import LAUNCH_TIMEOUT, children, error_lines, free_port, run, torchrun
from test_video import OUT, X264_PSNR, decoded, image_render, make_clip, packets, rgb, scene, upscale, video_end

import inference
import settings
import video
from distributed import cut
from helpers import ROOT, run_limited, small

pytestmark = pytest.mark.usefixtures('one_thread')

PARTS = [(0, 5), (5, 9), (9, 12)]  # segments of a 12-frame clip that start mid-GOP (keyframes at 0, 4, 8)


@pytest.mark.parametrize('costs, frames, world_size', [([5, 3, 3], [1, 10, 4], 2), ([1], [3], 4), ([100, 1], [1, 6], 3),
                                                       ([2, 2], [1, 1], 3), ([4, 1, 9], [30, 1, 17], 4)])
def test_cut_covers_every_frame_once_in_runs_and_balances(costs, frames, world_size):
    split = cut(costs, frames, world_size)
    assert len(split) == world_size and cut(list(costs), list(frames), world_size) == split
    for i, count in enumerate(frames):
        runs = sorted((first, end) for share in split for item, first, end in share if item == i)
        assert runs[0][0] == 0 and runs[-1][1] == count and all(a[1] == b[0] for a, b in zip(runs, runs[1:]))
        assert count > 1 or runs == [(0, 1)]  # an image (one frame) goes whole
    assert all(len({i for i, _, _ in share}) == len(share) for share in split)  # one run of an item per process
    loads = [sum(costs[i] * (end - first) for i, first, end in share) for share in split]
    images = [sum(costs[i] for i, _, _ in share if frames[i] == 1) for share in split]
    frame = max([c for c, f in zip(costs, frames) if f > 1], default=0)
    # the images by shares, then the frames fill each share up to the mean, within a frame of it
    assert max(loads) <= max(max(images), sum(c * f for c, f in zip(costs, frames)) / world_size + frame)


def test_entry_points_are_keyframes_no_packet_crosses(tmp_path):
    closed = [(0, True), (2, False), (1, False), (3, True), (5, False), (4, False)]
    assert video.entry_points(closed) == [0, 3]
    leading = [(0, True), (3, True), (2, False), (4, False)]  # an open GOP: frame 2 shows before keyframe 3
    assert video.entry_points(leading) == [0]
    assert video.entry_points([(0, True), (None, True)]) == [0]  # no timestamps: from the start only
    clip = make_clip(tmp_path / 'gop.mkv', gop=4, vfr=True)
    assert video.entry_points(video.video_packets(clip)) == [0, 4, 8]
    clip = make_clip(tmp_path / 'one_key.mp4', audio='', subtitles=False)
    assert video.entry_points(video.video_packets(clip)) == [0]


@pytest.fixture(scope='module')
def model():
    return small('liif-fast')


def joined(model, clip: Path, out: Path, parts: list[tuple[int, int]], *args: str) -> Path:
    """`clip` rendered as the segments `parts` (each in a call of its own, as a process renders it) and joined."""
    cfg = settings.parse([f'--input={clip}', '--scale=2', *args], 'inference')
    settings.check(cfg, 'inference')
    render = inference.video_render(model, torch.device('cpu'), cfg)
    segments = [video.segment_path(tmp, part, clip.suffix) for part in parts for tmp in [out.parent / 'segments']]
    for segment, part in zip(segments, parts):
        assert video.render_segment(render, clip, segment, OUT, cfg, part) == part[1] - part[0]
    video.join_segments(clip, segments, out, cfg)
    return out


def assert_same_timing_and_streams(got: Path, one: Path, kinds=('audio', 'subtitles')) -> None:
    """The frames' timestamps, the video's end, the file's duration, rotation, colour tags and the other
    streams' packets of a joined file are those of one process's."""
    a, b = decoded(got), decoded(one)
    assert [f.pts * f.time_base for f in a] == [f.pts * f.time_base for f in b]
    assert video_end(got) == video_end(one)
    for x, y in zip(a[:1], b[:1]):
        assert (x.rotation, x.color_range, x.colorspace, x.format.name) == (y.rotation, y.color_range, y.colorspace,
                                                                             y.format.name)
    with av.open(str(got)) as g, av.open(str(one)) as o:
        assert g.duration == o.duration and g.streams.video[0].average_rate == o.streams.video[0].average_rate
    for kind in kinds:
        assert packets(got, kind) == packets(one, kind) and packets(one, kind)


@pytest.mark.parametrize('source', [dict(gop=4), dict()])  # keyframes at 0, 4, 8; one keyframe only
def test_lossless_segments_join_into_the_one_process_frames(model, tmp_path, source):
    clip = make_clip(tmp_path / 'vfr.mkv', vfr=True, **source)
    args = ('--codec=ffv1', '--pix_fmt=bgr0')
    one = upscale(model, clip, tmp_path / 'one.mkv', *args)
    got = joined(model, clip, tmp_path / 'two.mkv', PARTS, *args)
    assert [rgb(f).tolist() for f in decoded(got)] == [rgb(f).tolist() for f in decoded(one)]
    assert_same_timing_and_streams(got, one)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith('.')] == []  # no temporary file left


def keyframe_times(path: Path) -> list[Fraction]:
    with av.open(str(path)) as container:
        return [p.pts * p.time_base for p in container.demux(video=0) if p.size and p.is_keyframe]


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    return 10 * np.log10(255 ** 2 / np.mean((a - b) ** 2))


@pytest.mark.parametrize('name, codec, audio, args', [
    ('turned.mp4', 'libx264', 'aac', ()), ('hevc.mkv', 'libx264', 'aac', ('--codec=libx265',)),
    ('clip.webm', 'libvpx-vp9', 'libopus', ('--codec=libvpx-vp9',))])
def test_lossy_segments_start_on_keyframes_and_keep_timing_streams_and_quality(model, tmp_path, name, codec, audio,
                                                                                args):
    clip = make_clip(tmp_path / name, vfr=True, gop=4, codec=codec, audio=audio, subtitles=name != 'clip.webm',
                     rotation=90 if name == 'turned.mp4' else 0)
    one = upscale(model, clip, tmp_path / f'one{clip.suffix}', *args)
    got = joined(model, clip, tmp_path / f'two{clip.suffix}', PARTS, *args)
    assert_same_timing_and_streams(got, one, ('audio', 'subtitles') if name != 'clip.webm' else ('audio',))
    starts = [t * Fraction(1, 1000) for t in (0, 500, 900)]  # frames 0, 5 and 9 of the variable-rate clip
    assert set(starts) <= set(keyframe_times(got))
    # rate-distortion: each file's frames against the exact render of the decoded input frames; the
    # segments' encoders restart at each cut (a keyframe there, no look-ahead across it)
    exact = [image_render(model, frame) for frame in decoded(clip)]
    ones = [psnr(rgb(f), e) for f, e in zip(decoded(one), exact)]
    twos = [psnr(rgb(f), e) for f, e in zip(decoded(got), exact)]
    assert min(twos) > X264_PSNR - 3 and np.mean(twos) > np.mean(ones) - 1, (np.mean(ones), np.mean(twos))


def test_a_part_in_segments_keeps_its_frames_and_packets(model, tmp_path):
    clip = make_clip(tmp_path / 'clip.mkv', gop=4, audio='libopus')
    args = ('--codec=ffv1', '--pix_fmt=bgr0', '--frames=[3,11]')
    one = upscale(model, clip, tmp_path / 'one.mkv', *args)
    got = joined(model, clip, tmp_path / 'two.mkv', [(3, 6), (6, 11)], *args)
    assert [rgb(f).tolist() for f in decoded(got)] == [rgb(f).tolist() for f in decoded(one)]
    assert [f.pts for f in decoded(got)][:2] == [0, 100]  # the part starts where the clip did
    assert_same_timing_and_streams(got, one)


def test_a_segment_is_reused_only_when_whole(model, tmp_path):
    clip = make_clip(tmp_path / 'clip.mkv', count=6, gop=2, audio='', subtitles=False)
    cfg = settings.parse([f'--input={clip}', '--scale=2', '--codec=ffv1', '--pix_fmt=bgr0'], 'inference')
    render = inference.video_render(model, torch.device('cpu'), cfg)
    first, second = tmp_path / 'a.mkv', tmp_path / 'b.mkv'
    assert video.render_segment(render, clip, first, OUT, cfg, (0, 3)) == 3
    assert video.render_segment(render, clip, first, OUT, cfg, (0, 3)) == 0  # whole: kept
    second.write_bytes(first.read_bytes())  # three frames where four belong
    assert video.render_segment(render, clip, second, OUT, cfg, (2, 6)) == 4
    assert video.segment_frames(second) == 4 and video.segment_frames(tmp_path / 'none.mkv') == 0


def test_the_plan_cuts_videos_into_segments_but_not_an_avi(tmp_path):
    """split_work (rank 0's plan): an .avi, whose container keeps no timestamps to join by, goes whole to a
    process, weighed by its frames; an .mkv is cut, its segments counted from the video's first frame
    (--frames)."""
    (tmp_path / 'in').mkdir()
    make_clip(tmp_path / 'in' / 'a.avi', count=12, audio='', subtitles=False)
    make_clip(tmp_path / 'in' / 'b.mkv', count=12, audio='', subtitles=False)
    cfg = settings.parse([f'--input={tmp_path / "in"}', f'--output={tmp_path / "out"}/', '--scale=2',
                          '--frames=[2,12]'], 'inference')
    split = inference.split_work(cfg, 3)  # the avi alone passes the mean load: the others share the mkv
    pieces = {(target.name, frames, segment and segment[:2]) for share in split for _, target, frames, segment in share}
    assert pieces == {('a_x2.avi', 10, None), ('b_x2.mkv', 5, (2, 7)), ('b_x2.mkv', 5, (7, 12))}
    [folder] = (tmp_path / 'out').glob('.b_x2.mkv.*.segments')
    assert sorted(segment[2] for share in split for *_, segment in share if segment) == \
        [folder / '0000002-0000007.mkv', folder / '0000007-0000012.mkv']


# ---- under torchrun: two processes, the official weights

def launch_args(source: Path, out: str, weights: Path, *extra: str) -> list[str]:
    return ['inference.py', f'--input={source}', f'--output={out}', f'--weights={weights}', '--scale=2',
            '--device=cpu', '--codec=ffv1', '--pix_fmt=bgr0', *extra]


def same_frames(a: Path, b: Path) -> bool:
    x, y = decoded(a), decoded(b)
    return [f.pts for f in x] == [f.pts for f in y] and all(np.array_equal(rgb(f), rgb(g)) for f, g in zip(x, y))


@pytest.fixture(scope='module')
def folder(tmp_path_factory) -> Path:
    """An image and two small videos: keyframes every 4 frames at a variable rate with sound and subtitles,
    and one keyframe only."""
    folder = tmp_path_factory.mktemp('mixed')
    make_clip(folder / 'a.mkv', size=(24, 32), gop=4, vfr=True)
    make_clip(folder / 'b.mkv', count=8, size=(24, 32), audio='libopus', subtitles=False)
    av.VideoFrame.from_ndarray(scene(0, (24, 32)), format='rgb24').to_image().save(folder / 'c.png')
    return folder


@pytest.mark.slow
def test_processes_cut_the_videos_of_a_folder_into_the_one_process_files(folder, official_weights, tmp_path):
    """Three processes: a.mkv is cut at frame 6 (its second segment decodes from keyframe 4), b.mkv at
    frame 1 (one keyframe: its second segment decodes frame 0 and drops it), the image goes whole."""
    inference.main(launch_args(folder, f'{tmp_path}/one/', official_weights)[1:])
    done = run(torchrun(launch_args(folder, f'{tmp_path}/two/', official_weights), 3))
    assert done.returncode == 0, done.stderr[-3000:]
    assert sorted(p.name for p in (tmp_path / 'two').iterdir()) == ['a_x2.mkv', 'b_x2.mkv', 'c_x2.png']
    for name in ('a_x2.mkv', 'b_x2.mkv'):
        assert same_frames(tmp_path / 'two' / name, tmp_path / 'one' / name), name
    assert_same_timing_and_streams(tmp_path / 'two' / 'a_x2.mkv', tmp_path / 'one' / 'a_x2.mkv')
    assert packets(tmp_path / 'two' / 'b_x2.mkv', 'audio') == packets(tmp_path / 'one' / 'b_x2.mkv', 'audio')
    assert (tmp_path / 'two' / 'c_x2.png').read_bytes() == (tmp_path / 'one' / 'c_x2.png').read_bytes()
    assert 'inference: 100%' in done.stderr and '21/21' in done.stderr  # one bar of frames: 12 + 8 + 1 image


@pytest.mark.slow
def test_more_processes_than_frames_of_a_part(folder, official_weights, tmp_path):
    """--frames=[5,7]: two frames over three processes; one has nothing to do."""
    source = folder / 'a.mkv'
    one = inference.main(launch_args(source, f'{tmp_path}/one.mkv', official_weights, '--frames=[5,7]')[1:])[0]
    done = run(torchrun(launch_args(source, f'{tmp_path}/out/a.mkv', official_weights, '--frames=[5,7]'), 3))
    assert done.returncode == 0, done.stderr[-3000:]
    assert same_frames(tmp_path / 'out' / 'a.mkv', one) and len(decoded(one)) == 2
    assert_same_timing_and_streams(tmp_path / 'out' / 'a.mkv', one, ('audio',))
    assert [p.name for p in (tmp_path / 'out').iterdir()] == ['a.mkv']


@pytest.mark.slow
def test_two_nodes_write_the_file_two_local_processes_write(folder, official_weights, tmp_path):
    """Two torchrun launches of one process each meet on 127.0.0.1 (c10d) and cut one video as two local
    processes do: the same bytes."""
    local = run(torchrun(launch_args(folder / 'a.mkv', f'{tmp_path}/local/', official_weights)))
    assert local.returncode == 0, local.stderr[-3000:]
    launch = ['--nnodes=2', '--rdzv_backend=c10d', f'--rdzv_endpoint=127.0.0.1:{free_port()}',
              f'--rdzv_id={uuid.uuid4().hex}']
    cmd = torchrun(launch_args(folder / 'a.mkv', f'{tmp_path}/nodes/', official_weights), 1, launch)
    nodes = [subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, 'OMP_NUM_THREADS': '1'}, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL) for _ in range(2)]
    assert [node.wait(timeout=LAUNCH_TIMEOUT) for node in nodes] == [0, 0]
    assert [p.name for p in (tmp_path / 'nodes').iterdir()] == ['a_x2.mkv']
    assert (tmp_path / 'nodes' / 'a_x2.mkv').read_bytes() == (tmp_path / 'local' / 'a_x2.mkv').read_bytes()


@pytest.mark.slow
def test_a_truncated_video_stops_every_process_with_one_error_line(folder, official_weights, tmp_path):
    cut_off = tmp_path / 'cut.mkv'
    cut_off.write_bytes((folder / 'a.mkv').read_bytes()[:4000])
    done = run(torchrun(launch_args(cut_off, f'{tmp_path}/out/', official_weights)))
    [line] = error_lines(done.stderr)
    assert 'cut.mkv' in line and 'truncated' in line, line
    # rank 0 refuses it in the split; the other process stops with status 2, unless torchrun's SIGTERM comes first
    assert 'exitcode  : 2' in done.stderr and 'exitcode  : 1' not in done.stderr and not (tmp_path / 'out').exists()


def segments_of(folder: Path) -> list[Path]:
    """The finished segments in the hidden folders under `folder` (not the temporary files of unfinished ones)."""
    return sorted(path for path in folder.glob('.*.segments/*') if not path.name.startswith('.'))


@pytest.mark.slow
def test_a_full_disk_mid_segment_or_mid_join_keeps_the_segments_and_the_rerun_joins_them(folder, official_weights, tmp_path):
    source, out = folder / 'a.mkv', tmp_path / 'out' / 'a.mkv'
    cmd = torchrun(launch_args(source, str(out), official_weights))
    env = {**os.environ, 'OMP_NUM_THREADS': '1'}
    done = run_limited(cmd[1:], 8_000, env)  # not even a segment, ~14 kB, fits
    [line] = error_lines(done.stderr)
    assert 'the disk is full' in line and '.segments/' in line and 'segments are kept' in line, line
    assert not out.exists() and segments_of(out.parent) == []
    done = run_limited(cmd[1:], 25_000, env)  # a segment fits; the joined 28 kB file does not
    [line] = error_lines(done.stderr)
    assert 'the disk is full' in line and str(out) in line and 'segments are kept' in line, line
    assert 'exitcode  : 2' in done.stderr and 'exitcode  : 1' not in done.stderr
    assert [p.name for p in out.parent.iterdir() if not p.name.endswith('.segments')] == []
    kept = {p.name: p.stat().st_mtime_ns for p in segments_of(out.parent)}
    assert len(kept) == 2
    rerun = run(cmd)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert 'a.mkv: 2 of its 2 segments were finished by an earlier run' in rerun.stdout
    assert same_frames(out, inference.main(launch_args(source, f'{tmp_path}/one.mkv', official_weights)[1:])[0])
    assert [p.name for p in out.parent.iterdir()] == ['a.mkv']  # the segments folder removed


@pytest.mark.slow
@pytest.mark.parametrize('who', ['one', 'all'])
def test_killed_processes_leave_nothing_at_the_output_and_the_rerun_renders_what_is_missing(official_weights,
                                                                                            tmp_path, who):
    """Three processes, a segment each; once one segment is finished, kill -9 a process whose segment is
    not (torchrun then stops the others, which remove their temporary files), or every process at once
    (as a lost node). The rerun renders only what is missing."""
    source = make_clip(tmp_path / 'long.mkv', count=40, size=(24, 32), gop=4, audio='', subtitles=False)
    out = tmp_path / 'out' / 'long.mkv'
    cmd = torchrun(launch_args(source, str(out), official_weights, '--frames=[0,36]'), 3)
    with open(tmp_path / 'log.txt', 'w') as log:
        launch = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, 'OMP_NUM_THREADS': '1'}, stdout=log, stderr=log)
        deadline = time.monotonic() + LAUNCH_TIMEOUT
        while not segments_of(out.parent) and launch.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        workers = children(launch.pid)
        done = {path.name for path in segments_of(out.parent)}
        busy = [pid for pid, rank in workers.items() if f'{12 * int(rank):07d}-{12 * int(rank) + 12:07d}.mkv' not in done]
        victims = busy[:1] if who == 'one' else [*workers, launch.pid]
        for pid in victims:
            os.kill(pid, signal.SIGKILL)
        launch.wait(timeout=LAUNCH_TIMEOUT)
    assert not out.exists() and busy, (tmp_path / 'log.txt').read_text()[-2000:]
    finished = len(segments_of(out.parent))
    assert 1 <= finished < 3, (tmp_path / 'log.txt').read_text()[-2000:]
    if who == 'one':  # only the killed process's temporary file is left behind
        assert all(f'.{victims[0]}.' in p.name for p in out.parent.glob('.*.segments/.*'))
    rerun = run(cmd)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f'long.mkv: {finished} of its 3 segments were finished by an earlier run' in rerun.stdout
    one = inference.main(launch_args(source, f'{tmp_path}/one.mkv', official_weights, '--frames=[0,36]')[1:])[0]
    assert same_frames(out, one)
    assert [p.name for p in out.parent.iterdir()] == ['long.mkv']
