"""Video through inference.py on tiny clips built here with PyAV's encoders: each frame equals the image
render of the decoded input frame, the other streams are copied packet for packet, and the timing,
rotation and bit depth are kept. Renders use a small random LIIF through inference.upscale (the path
inference.main takes after loading a model); the command-line runs use the official weights."""
import itertools
import os
import threading
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import torch

import config
import inference
import settings
import video
from cli import run_main
from helpers import ROOT, assert_disk_full, check_problems, run_limited, small

pytestmark = pytest.mark.usefixtures('one_thread')

SIZE = (48, 64)  # the clips' height, width
OUT = (96, 128)  # at --scale=2
# 8-bit RGB -> yuv444p -> RGB: each conversion rounds to 8 bits with 0.5 level of error, and the inverse
# matrix amplifies the YCbCr error by up to |R - Y| / |Cr| = 1.40 (BT.601): 0.5 + 1.40 * 0.5 * 2 < 2 levels
# (measured: 2)
YUV444_LEVELS = 2
X264_PSNR = 38  # dB, libx264 yuv420p at crf 18 against the lossless frames of these smooth clips (measured 43.2-43.8)


def scene(i: int, size=SIZE) -> np.ndarray:
    """Frame i of a smooth moving pattern with a little noise, HxWx3 uint8."""
    y, x = np.mgrid[:size[0], :size[1]]
    rgb = np.stack([np.sin(x / 7 + i * 0.4), np.cos(y / 5 - i * 0.3), np.sin((x + y) / 11 + i * 0.2)], axis=2)
    noise = np.random.default_rng(i).normal(0, 0.03, rgb.shape)
    return (np.clip(0.5 + 0.4 * rgb + noise, 0, 1) * 255).round().astype(np.uint8)


def make_clip(path: Path, count=12, vfr=False, rotation=0, codec='libx264', pix_fmt='yuv420p', size=SIZE,
              audio='aac', subtitles=True, full_range=False, colorspace=None, frames=scene, gop=0) -> Path:
    """A clip at 10 fps (vfr: 50, 150, 100 ms steps), an audio track of the same length and two subtitle
    cues (mov_text in mp4, SubRip in mkv); full_range: YCbCr over 0-255, tagged so; colorspace: FFmpeg's
    colour matrix to convert by and tag (None: unspecified, read as BT.601); frames(i, size): frame i as
    HxWx3 uint8 (rgb24) or uint16 (rgb48le); gop: a keyframe every gop frames (0: the encoder's default)."""
    mp4 = path.suffix == '.mp4'
    with av.open(str(path), 'w') as out:  # every stream is added before the first packet
        video = out.add_stream(codec, rate=10)
        video.height, video.width, video.pix_fmt = *size, pix_fmt
        tick = Fraction(1, 10) if path.suffix == '.avi' else Fraction(1, 1000)  # AVI counts frames
        video.time_base = video.codec_context.time_base = tick
        if gop:
            video.codec_context.gop_size = gop
        if rotation:
            video.set_display_rotation(rotation)
        video.codec_context.color_range = 2 if full_range else 1  # JPEG (full) or MPEG (limited)
        if colorspace is not None:
            video.codec_context.colorspace = colorspace
        sound = out.add_stream(audio, rate=48000 if audio == 'libopus' else 8000) if audio else None
        text = out.add_mux_stream('mov_text' if mp4 else 'subrip') if subtitles else None
        t, steps = 0, [50, 150, 100] if vfr else [100]
        for i in range(count):
            pixels = frames(i, size)
            frame = av.VideoFrame.from_ndarray(pixels, format='rgb48le' if pixels.dtype == np.uint16 else 'rgb24')
            frame = frame.reformat(format=pix_fmt, dst_colorspace=colorspace, dst_color_range=video.codec_context.color_range)
            frame.pts, frame.time_base = int(Fraction(t, 1000) / tick), tick
            t += steps[i % len(steps)]
            out.mux(video.encode(frame))
        out.mux(video.encode(None))
        for n in range(0, t * sound.rate // 1000, 960) if sound else []:
            wave = np.sin(np.arange(n, n + 960)[None] * 0.05).astype(np.float32) * 0.3
            block = av.AudioFrame.from_ndarray(wave, format='fltp', layout='mono')
            block.sample_rate, block.pts = sound.rate, n
            out.mux(sound.encode(block))
        if sound:
            out.mux(sound.encode(None))
        for i, line in enumerate(['hello', 'world'] if text else []):
            packet = av.Packet(len(line).to_bytes(2, 'big') + line.encode() if mp4 else line.encode())
            packet.stream, packet.time_base = text, Fraction(1, 1000)
            packet.pts = packet.dts = i * 500
            packet.duration = 400
            out.mux(packet)
    return path


@pytest.fixture(scope='module')
def model():
    return small('liif-fast')


def upscale(model, clip: Path, out: Path, *args: str) -> Path:
    cfg = settings.parse([f'--input={clip}', '--scale=2', *args], 'inference')
    settings.check(cfg, 'inference')
    inference.upscale(model, torch.device('cpu'), clip, out, cfg, progress=False)
    return out


def decoded(path: Path) -> list[av.VideoFrame]:
    with av.open(str(path)) as container:
        return list(container.decode(video=0))


def rgb(frame: av.VideoFrame) -> np.ndarray:
    return frame.to_ndarray(format='rgb24', src_color_range=frame.color_range).astype(int)


def image_render(model, frame: av.VideoFrame, size=OUT) -> np.ndarray:
    """The decoded frame rendered as inference.py renders an image: model.render, rounded half up."""
    lr = torch.from_numpy(rgb(frame).astype(np.float32) / 255).permute(2, 0, 1)[None]
    with torch.no_grad():
        sr = model.render(lr, size, chunk=config.chunk)
    return np.floor(sr[0].clamp(0, 1).permute(1, 2, 0).double().numpy() * 255 + 0.5).astype(int)


def packets(path: Path, kind: str) -> list[tuple]:
    """(bytes, pts, dts) in seconds of every packet of the first `kind` stream."""
    with av.open(str(path)) as container:
        stream = getattr(container.streams, kind)[0]
        return [(bytes(p), p.pts * p.time_base, p.dts * p.time_base) for p in container.demux(stream) if p.size]


def video_end(path: Path) -> Fraction:
    """When the video ends: its last frame's time plus its duration, in seconds."""
    with av.open(str(path)) as container:
        return max((p.pts + p.duration) * p.time_base for p in container.demux(video=0) if p.size)


def test_lossless_frames_equal_the_image_render_and_streams_are_copied(model, tmp_path):
    clip = make_clip(tmp_path / 'vfr.mkv', vfr=True)
    out = upscale(model, clip, tmp_path / 'out.mkv', '--codec=ffv1', '--pix_fmt=bgr0')
    frames, ins = decoded(out), decoded(clip)
    assert len(frames) == len(ins) == 12 and (frames[0].height, frames[0].width) == OUT
    assert [f.pts for f in frames] == [f.pts for f in ins] == [0, 50, 200, 300, 350, 500, 600, 650, 800, 900, 950, 1100]
    for got, frame in zip(frames, ins):  # RGB through ffv1: no colour conversion, exact
        np.testing.assert_array_equal(rgb(got), image_render(model, frame))
    for kind in ('audio', 'subtitles'):
        assert packets(out, kind) == packets(clip, kind) and packets(clip, kind)
    assert video_end(out) == video_end(clip) == Fraction(12, 10)

    out = upscale(model, clip, tmp_path / 'yuv.mkv', '--codec=ffv1', '--pix_fmt=yuv444p', '--frames=[0,4]')
    for got, frame in zip(decoded(out), ins):
        assert np.abs(rgb(got) - image_render(model, frame)).max() <= YUV444_LEVELS


def test_mp4_keeps_rotation_and_streams_and_x264_stays_close(model, tmp_path):
    clip = make_clip(tmp_path / 'turned.mp4', rotation=90)
    out = upscale(model, clip, tmp_path / 'out.mp4')  # libx264, yuv420p, crf 18
    frames, ins = decoded(out), decoded(clip)
    assert len(frames) == 12 and [f.pts * f.time_base for f in frames] == [f.pts * f.time_base for f in ins]
    assert {f.rotation for f in frames} == {f.rotation for f in ins} == {90}
    for kind in ('audio', 'subtitles'):
        assert packets(out, kind) == packets(clip, kind) and packets(clip, kind)
    for got, frame in zip(frames, ins):
        mse = np.mean((rgb(got) - image_render(model, frame)) ** 2)
        assert 10 * np.log10(255 ** 2 / mse) > X264_PSNR


def test_a_part_keeps_its_frames_and_the_packets_of_its_time(model, tmp_path):
    clip = make_clip(tmp_path / 'clip.mkv', audio='libopus')
    out = upscale(model, clip, tmp_path / 'part.mkv', '--codec=ffv1', '--pix_fmt=bgr0', '--frames=[3,7]')
    frames, ins = decoded(out), decoded(clip)
    assert [f.pts for f in frames] == [0, 100, 200, 300]  # the part starts where the clip did
    for got, frame in zip(frames, ins[3:7]):
        np.testing.assert_array_equal(rgb(got), image_render(model, frame))
    start, end = Fraction(3, 10), Fraction(7, 10)
    for kind in ('audio', 'subtitles'):
        expected = [(data, pts - start, dts - start) for data, pts, dts in packets(clip, kind) if start <= pts < end]
        assert packets(out, kind) == expected


def test_odd_sizes_and_ten_bits(model, tmp_path):
    clip = make_clip(tmp_path / 'deep.mkv', count=2, codec='ffv1', pix_fmt='yuv420p10le', audio='', subtitles=False)
    with pytest.warns(UserWarning, match='97x129 output is made 98x130'):
        out = upscale(model, clip, tmp_path / 'even.mkv', '--size=[97,129]')
    frames = decoded(out)
    assert (frames[0].height, frames[0].width) == (98, 130) and frames[0].format.name == 'yuv420p10le'
    out = upscale(model, clip, tmp_path / 'odd.mkv', '--size=[97,129]', '--codec=ffv1', '--pix_fmt=yuv444p')
    assert (decoded(out)[0].height, decoded(out)[0].width) == (97, 129)


def run(argv: list[str], capsys) -> tuple[int, list[str]]:
    status = run_main(inference.main, argv)
    return status, [line for line in capsys.readouterr().err.splitlines() if line.startswith('error:')]


def test_a_folder_of_videos_and_images(official_weights, tmp_path, capsys):
    folder = tmp_path / 'in'
    folder.mkdir()
    make_clip(folder / 'b.mp4', count=2, size=(24, 32))
    av.VideoFrame.from_ndarray(scene(0, (24, 32)), format='rgb24').to_image().save(folder / 'a.png')
    written = inference.main([f'--input={folder}', f'--output={tmp_path / "out"}/', f'--weights={official_weights}',
                              '--scale=1.5'])
    assert [p.name for p in written] == ['a_x1.5.png', 'b_x1.5.mp4']
    assert [(f.height, f.width) for f in decoded(written[1])] == [(36, 48)] * 2

    make_clip(folder / 'c.mkv')
    cut = (folder / 'c.mkv').read_bytes()
    (folder / 'c.mkv').write_bytes(cut[:len(cut) // 2])
    status, errors = run([f'--input={folder}', f'--output={tmp_path / "out"}/', f'--weights={official_weights}',
                          '--scale=1.5'], capsys)
    assert status == 2 and len(errors) == 1 and 'c.mkv' in errors[0] and 'truncated' in errors[0], errors
    assert sorted(p.name for p in (tmp_path / 'out').iterdir()) == ['a_x1.5.png', 'b_x1.5.mp4']


def test_bad_inputs_give_one_error_and_no_output(official_weights, tmp_path, capsys):
    sound = make_clip(tmp_path / 'sound.mkv', count=3)
    with av.open(str(sound)) as container, av.open(str(tmp_path / 'sound_only.mkv'), 'w') as out:
        copy = out.add_stream_from_template(container.streams.audio[0])
        for packet in container.demux(container.streams.audio[0]):
            if packet.size:
                packet.stream = copy
                out.mux(packet)
    make_clip(tmp_path / 'clip.webm', count=2, size=(24, 32), codec='libvpx-vp9', audio='libopus', subtitles=False)
    (tmp_path / 'noise.mp4').write_bytes(np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8).tobytes())
    cases = [('sound_only.mkv', [], 'no video stream'), ('noise.mp4', [], 'not a readable video'),
             ('sound.mkv', ['--codec=nope'], "codec 'nope' is not a video encoder"),
             ('sound.mkv', ['--frames=[5,9]'], 'starts past its 3 frames'),
             ('clip.webm', [], "'webm' format does not support 'libx264'")]
    for name, extra, message in cases:
        out = tmp_path / 'out' / f'x{Path(name).suffix}'
        status, errors = run([f'--input={tmp_path / name}', f'--output={out}', f'--weights={official_weights}',
                              *extra], capsys)
        assert status == 2 and len(errors) == 1 and message in errors[0], (name, errors)
        assert not out.parent.exists() or not list(out.parent.iterdir())


def test_a_full_disk_mid_encode_leaves_nothing(official_weights, tmp_path):
    clip = make_clip(tmp_path / 'clip.mkv', count=6, size=(24, 32))
    out = tmp_path / 'out' / 'big.mkv'
    out.parent.mkdir()
    done = run_limited(['inference.py', f'--input={clip}', f'--output={out}', f'--weights={official_weights}',
                        '--scale=2', '--codec=ffv1', '--pix_fmt=bgr0', '--threads=1'], 12_000)  # ~5 kB a frame
    assert_disk_full(done, out)
    assert not list(out.parent.iterdir())


@pytest.mark.parametrize('arg, message', [
    ('--codec=aac', "codec 'aac' is not a video encoder"), ('--pix_fmt=rgb24', "pix_fmt 'rgb24' is not one that"),
    ('--preset=fastest', "preset 'fastest'"), ('--crf=64', 'crf must be'), ('--frames=[3,3]', 'frames must be'),
    ('--frames=[2]', 'frames must be')])
def test_video_settings_are_checked(arg, message):
    assert message in check_problems([f'--input={ROOT / "figure" / "example_lr.png"}', arg], 'inference')


def test_a_full_range_source_keeps_its_range(model, tmp_path):
    clip = make_clip(tmp_path / 'full.mkv', count=3, codec='ffv1', pix_fmt='yuv444p', audio='', subtitles=False,
                     full_range=True)
    ins = decoded(clip)
    assert ins[0].color_range == 2  # JPEG (full) range
    # the decoding honours it: the frames encoded (a limited-range reading would stretch them by 255/219)
    assert all(np.abs(rgb(frame) - scene(i)).max() <= YUV444_LEVELS for i, frame in enumerate(ins))
    out = upscale(model, clip, tmp_path / 'out.mkv', '--codec=ffv1', '--pix_fmt=yuv444p')
    frames = decoded(out)
    assert {f.color_range for f in frames} == {2}
    for got, frame in zip(frames, ins):
        assert np.abs(rgb(got) - image_render(model, frame)).max() <= YUV444_LEVELS


def test_avi_frames_keep_their_order(model, tmp_path):
    """AVI stores no presentation times: a libx264 source's B-frames decode with times out of order, and
    each frame takes its place from the decoder's order instead."""
    clip = make_clip(tmp_path / 'old.avi', count=6, audio='libmp3lame', subtitles=False)
    out = upscale(model, clip, tmp_path / 'out.avi', '--codec=ffv1', '--pix_fmt=bgr0')
    frames, ins = decoded(out), decoded(clip)
    assert len(frames) == len(ins) == 6
    for got, frame in zip(frames, ins):
        np.testing.assert_array_equal(rgb(got), image_render(model, frame))
    assert [data for data, *_ in packets(out, 'audio')] == [data for data, *_ in packets(clip, 'audio')]


def gray_ramp(i: int, size=SIZE) -> np.ndarray:
    """A 16-bit gray ramp from 0.1 to 0.9 over the frame in reading order: ~2500 distinct levels, ~800 in 10 bits."""
    ramp = np.linspace(0.1, 0.9, size[0] * size[1]).reshape(size)
    return np.repeat(np.round(ramp * 65535).astype(np.uint16)[:, :, None], 3, axis=2)


def luma(frame: av.VideoFrame) -> np.ndarray:
    """The Y plane of a 10-bit frame as stored (no conversion): HxW integers."""
    plane = frame.planes[0]
    return np.frombuffer(plane, np.uint16).reshape(plane.height, plane.line_size // 2)[:, :plane.width].astype(int)


def test_ten_bit_samples_keep_their_levels(tmp_path):
    """A 10-bit gray ramp through an identity render keeps its Y samples: the frame goes through 16-bit RGB,
    never 8 bits (where a gray has at most 256 levels)."""
    clip = make_clip(tmp_path / 'deep.mkv', count=1, codec='ffv1', pix_fmt='yuv444p10le', audio='', subtitles=False,
                     frames=gray_ramp)
    cfg = settings.parse([f'--input={clip}', '--codec=ffv1', '--pix_fmt=yuv444p'], 'inference')
    video.upscale_video(lambda lr, size: lr, clip, tmp_path / 'out.mkv', SIZE, cfg, progress=False)
    [source], [got] = decoded(clip), decoded(tmp_path / 'out.mkv')
    assert got.format.name == 'yuv444p10le'
    assert len(np.unique(luma(source))) > 700 and len(np.unique(luma(got))) > 700
    # YCbCr -> 16-bit RGB -> YCbCr: 16-bit rounding is 1/64 of a 10-bit level, the 10-bit one half a level
    assert np.abs(luma(got) - luma(source)).max() <= 1


def test_a_bt709_source_is_converted_by_its_own_matrix(model, tmp_path):
    """A clip tagged BT.709 is read and written by the BT.709 matrix (a BT.601 conversion of either drifts
    4 levels or more on these colours)."""
    clip = make_clip(tmp_path / 'hd.mkv', count=2, codec='ffv1', pix_fmt='yuv444p', audio='', subtitles=False,
                     colorspace=1)  # AVCOL_SPC_BT709
    ins = decoded(clip)
    assert int(ins[0].colorspace) == 1
    assert all(np.abs(rgb(frame) - scene(i)).max() <= YUV444_LEVELS for i, frame in enumerate(ins))
    frames = decoded(upscale(model, clip, tmp_path / 'out.mkv', '--codec=ffv1', '--pix_fmt=yuv444p'))
    assert {int(f.colorspace) for f in frames} == {1}
    for got, frame in zip(frames, ins):
        assert np.abs(rgb(got) - image_render(model, frame)).max() <= YUV444_LEVELS


def resident_mb() -> float:
    """This process's resident memory (/proc/self/statm), MB."""
    return int(Path('/proc/self/statm').read_text().split()[1]) * os.sysconf('SC_PAGE_SIZE') / 2 ** 20


def test_memory_stays_flat_over_a_long_clip(tmp_path):
    """600 frames stream through with the resident memory where it was after 100 (measured: 0.12 MB more;
    3000 frames: 0.4 MB, docs/video.md): no frame or packet piles up (a rendered frame kept would add 37 kB
    each, 18 MB here)."""
    clip = make_clip(tmp_path / 'long.mkv', count=600, size=(24, 32), gop=25, subtitles=False)
    cfg = settings.parse([f'--input={clip}', '--scale=2'], 'inference')
    memory = []

    def render(lr, size):
        memory.append(resident_mb())
        return torch.nn.functional.interpolate(lr, size=size, mode='bilinear', align_corners=False)
    video.upscale_video(render, clip, tmp_path / 'out.mkv', (48, 64), cfg, progress=False)
    assert len(memory) == 600 and max(memory[100:]) - memory[99] < 3, (memory[99], max(memory[100:]))


def test_the_threads_write_the_bytes_one_thread_writes(model, tmp_path, monkeypatch):
    """Decoding and encoding in threads of their own (video.DEPTH) change nothing in the file: the same
    bytes as decode, render and encode one after the other (bitexact), the other streams included."""
    clip = make_clip(tmp_path / 'clip.mkv', count=6, vfr=True)
    threads = upscale(model, clip, tmp_path / 'threads.mkv', '--frames=[1,5]').read_bytes()
    monkeypatch.setattr(video, 'DEPTH', 0)
    assert upscale(model, clip, tmp_path / 'one.mkv', '--frames=[1,5]').read_bytes() == threads


def pipeline_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name in ('video-decode', 'video-encode')]


def test_the_pipeline_threads_hand_over_errors_and_stop(tmp_path):
    def failing():
        yield 1
        raise ValueError('bad packet')
    found = video.ahead(failing())
    assert next(found) == 1
    with pytest.raises(ValueError, match='bad packet'):
        next(found)
    endless = video.ahead(itertools.count())
    assert next(endless) == 0
    endless.close()  # the producer, blocked on a full queue, stops
    assert pipeline_threads() == []
    ran = []
    with pytest.raises(OSError, match='disk'):
        with video.behind() as later:
            later(lambda: ran.append(1))
            later(lambda: (_ for _ in ()).throw(OSError('disk')))
            later(lambda: ran.append(2))  # dropped after the failure
    assert ran == [1] and pipeline_threads() == []
