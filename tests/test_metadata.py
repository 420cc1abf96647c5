"""What an input carries comes out again: alpha, one gray channel, 16-bit samples, the ICC profile, EXIF,
with EXIF orientation applied first. Each input is made here by a real encoder (Pillow, OpenCV) from a
crop of Set5 butterfly; each output is checked against the official model's render of what the rule
says it renders, quantised here from the equations (round half up of v * (2^bits - 1))."""
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image, ImageCms, ImageOps

import inference
from checkpoint import model_from_checkpoint
from imgproc import header_size, load_image, write_picture
from scripts.viewer import View, Viewer

pytestmark = pytest.mark.usefixtures('one_thread')
ROOT = Path(__file__).resolve().parents[1]
SCALE = 2
MAKE, MODEL = 0x010F, 0x0110  # EXIF tags: camera make and model
ORIENTATION = 0x0112


@pytest.fixture(scope='module')
def colour(benchmark_root) -> np.ndarray:
    """A 20 x 24 RGB uint8 crop of Set5 butterfly."""
    return np.asarray(Image.open(benchmark_root / 'Set5' / 'HR' / 'butterfly.png').convert('RGB'))[100:120, 120:144]


@pytest.fixture(scope='module')
def disc() -> np.ndarray:
    """A soft 20 x 24 alpha mask: a disc whose edge falls from 255 to 0 over about 6 pixels."""
    rows, cols = np.mgrid[:20, :24]
    radius = np.hypot(rows - 9.5, cols - 11.5)
    return np.clip((9 - radius) / 6 * 255, 0, 255).round().astype(np.uint8)


@pytest.fixture(scope='module')
def model(official_weights):
    return model_from_checkpoint(official_weights).eval()


def upscale(source: Path, target: Path, weights: Path, *extra: str) -> Path:
    [written] = inference.main([f'--input={source}', f'--output={target}', f'--weights={weights}', f'--scale={SCALE}',
                                '--device=cpu', *extra])
    return written


def rendered(model, samples: np.ndarray, bits: int = 8) -> np.ndarray:
    """The model's x2 render of HxWx3 (or HxW, replicated to RGB) integer samples: HxWx3 float64, [0, 1] units."""
    rgb = np.repeat(samples[:, :, None], 3, axis=2) if samples.ndim == 2 else samples
    lr = torch.from_numpy(rgb.astype(np.float32) / (2 ** bits - 1)).permute(2, 0, 1)[None]
    with torch.no_grad():
        sr = model.render(lr, (rgb.shape[0] * SCALE, rgb.shape[1] * SCALE))
    return sr[0].permute(1, 2, 0).double().numpy()


def quantised(x: np.ndarray, bits: int = 8) -> np.ndarray:
    return np.floor(np.clip(x, 0, 1) * (2 ** bits - 1) + 0.5)


def close(out: np.ndarray, expected: np.ndarray, lsb: int = 1) -> bool:
    """Equal within `lsb`: the pipeline averages in float32, the reference here in float64, so a value
    that falls within a rounding of a half can round the other way."""
    return np.abs(out.astype(np.int64) - expected.astype(np.int64)).max() <= lsb


def test_rgba_colour_is_its_own_render_and_alpha_the_render_of_alpha(tmp_path, official_weights, model, colour, disc):
    source = tmp_path / 'rgba.png'
    Image.fromarray(np.dstack([colour, disc])).save(source)
    out = Image.open(upscale(source, tmp_path / 'sr.png', official_weights))
    assert out.mode == 'RGBA' and out.size == (48, 40)
    got = np.asarray(out)
    assert close(got[:, :, :3], quantised(rendered(model, colour)))
    assert close(got[:, :, 3], quantised(rendered(model, disc).mean(axis=2)))  # the stated rule: the mean
    # a window of the output is the same pixels, alpha included
    part = np.asarray(Image.open(upscale(source, tmp_path / 'part.png', official_weights, '--window=[7,9,20,25]')))
    assert np.array_equal(part, got[7:27, 9:34])
    chunks = np.asarray(Image.open(upscale(source, tmp_path / 'chunks.png', official_weights, '--chunk=97')))
    assert np.array_equal(chunks, got)  # and so is a render in small chunks
    # --alpha=bicubic: Pillow's bicubic of the alpha; its 8-bit path here rounds between its two passes
    # too, so the two differ by up to 2 steps
    bicubic = np.asarray(Image.open(upscale(source, tmp_path / 'b.png', official_weights, '--alpha=bicubic')))
    assert close(bicubic[:, :, 3], np.asarray(Image.fromarray(disc).resize((48, 40), Image.BICUBIC)), lsb=2)
    assert np.array_equal(bicubic[:, :, :3], got[:, :, :3])


@pytest.mark.parametrize('value', [255, 0])
def test_a_constant_alpha_stays_exactly_that(tmp_path, official_weights, colour, value):
    source = tmp_path / 'flat.png'
    Image.fromarray(np.dstack([colour, np.full(colour.shape[:2], value, np.uint8)])).save(source)
    alpha = np.asarray(Image.open(upscale(source, tmp_path / 'sr.png', official_weights)))[:, :, 3]
    assert alpha.shape == (40, 48) and (alpha == value).all()


def test_gray_with_alpha_and_a_palette_with_transparency(tmp_path, official_weights, model, colour, disc):
    gray = np.asarray(Image.fromarray(colour).convert('L'))
    Image.fromarray(np.dstack([gray, disc]), 'LA').save(tmp_path / 'la.png')
    out = Image.open(upscale(tmp_path / 'la.png', tmp_path / 'la_sr.png', official_weights))
    assert out.mode == 'LA'
    got = np.asarray(out)
    assert close(got[:, :, 0], quantised(rendered(model, gray).mean(axis=2)))
    assert close(got[:, :, 1], quantised(rendered(model, disc).mean(axis=2)))

    palette = Image.fromarray(colour).quantize(32)
    palette.save(tmp_path / 'p.png', transparency=int(np.asarray(palette)[0, 0]))  # a tRNS chunk: one clear entry
    rgba = np.asarray(Image.open(tmp_path / 'p.png').convert('RGBA'))
    assert 0 < (rgba[:, :, 3] == 0).sum() < rgba[:, :, 3].size
    got = np.asarray(Image.open(upscale(tmp_path / 'p.png', tmp_path / 'p_sr.png', official_weights)))
    assert got.shape == (40, 48, 4)
    assert close(got[:, :, :3], quantised(rendered(model, rgba[:, :, :3])))
    assert close(got[:, :, 3], quantised(rendered(model, rgba[:, :, 3]).mean(axis=2)))


def gradient16() -> np.ndarray:
    """A smooth 20 x 24 16-bit ramp over a quarter of the range: its 8-bit version has 64 levels."""
    rows, cols = np.mgrid[:20, :24]
    return (20000 + (rows * 24 + cols) * 35).astype(np.uint16)


@pytest.mark.parametrize('suffix', ['.png', '.tif'])
def test_16_bit_gray_comes_out_16_bit_gray(tmp_path, official_weights, model, suffix):
    source = tmp_path / f'g16{suffix}'
    if suffix == '.png':
        cv2.imwrite(str(source), gradient16())
    else:
        Image.fromarray(gradient16()).save(source)
    out = Image.open(upscale(source, tmp_path / f'sr{suffix}', official_weights))
    assert out.mode == 'I;16'
    got = np.asarray(out)
    assert len(np.unique(got)) > 256  # no 8-bit step on the way
    assert close(got, quantised(rendered(model, gradient16(), 16).mean(axis=2), 16))


def test_16_bit_rgb_comes_out_16_bit_rgb(tmp_path, official_weights, model, colour):
    deep = colour.astype(np.uint16) * 257 + gradient16()[:, :, None] % 200  # below the 8-bit step
    cv2.imwrite(str(tmp_path / 'rgb16.png'), deep[:, :, ::-1])
    got = cv2.imread(str(upscale(tmp_path / 'rgb16.png', tmp_path / 'sr.png', official_weights)), cv2.IMREAD_UNCHANGED)
    assert got.dtype == np.uint16 and got.shape == (40, 48, 3)
    assert close(got[:, :, ::-1], quantised(rendered(model, deep, 16), 16))
    eight = cv2.imread(str(upscale(tmp_path / 'rgb16.png', tmp_path / 'sr8.png', official_weights, '--bits=8')),
                       cv2.IMREAD_UNCHANGED)
    assert eight.dtype == np.uint8
    # OpenCV writes 16-bit colour, Pillow cannot: the profile and EXIF chunks are added to its PNG
    icc, exif = ImageCms.ImageCmsProfile(ImageCms.createProfile('sRGB')).tobytes(), Image.Exif()
    exif[MAKE] = 'TestMaker'
    profiled = Image.open(write_picture(tmp_path / 'profiled.png', deep, icc, exif.tobytes()))
    assert profiled.info['icc_profile'] == icc and profiled.getexif()[MAKE] == 'TestMaker'
    assert np.array_equal(cv2.imread(str(tmp_path / 'profiled.png'), cv2.IMREAD_UNCHANGED)[:, :, ::-1], deep)


def cmyk_profile() -> bytes:
    """An ICC profile for CMYK data: sRGB's with its header's data colour space (bytes 16-19, ICC.1:2022
    7.2.6) made 'CMYK'. No viewer may apply it to RGB pixels."""
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile('sRGB')).tobytes()
    assert srgb[16:20] == b'RGB '
    return srgb[:16] + b'CMYK' + srgb[20:]


def test_cmyk_jpeg_comes_out_in_its_colours(tmp_path, official_weights, model, colour):
    Image.fromarray(colour).convert('CMYK').save(tmp_path / 'cmyk.jpg', quality=98, icc_profile=cmyk_profile())
    assert Image.open(tmp_path / 'cmyk.jpg').mode == 'CMYK'
    assert Image.open(tmp_path / 'cmyk.jpg').info['icc_profile'][16:20] == b'CMYK'
    out = Image.open(upscale(tmp_path / 'cmyk.jpg', tmp_path / 'sr.png', official_weights))
    assert out.mode == 'RGB' and 'icc_profile' not in out.info  # the CMYK profile does not describe RGB
    got = np.asarray(out)
    assert got.shape == (40, 48, 3)
    diff = np.abs(got.astype(int) - quantised(rendered(model, colour)))
    assert diff.mean() < 3  # JPEG's loss only: the inverted colours would be ~100 steps off


def jpeg_with_metadata(path: Path, colour: np.ndarray) -> bytes:
    """A JPEG stored sideways (EXIF orientation 6: turn 90 degrees clockwise to show) with an sRGB ICC
    profile and the camera's make and model; returns the profile's bytes."""
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile('sRGB')).tobytes()
    exif = Image.Exif()
    exif[MAKE], exif[MODEL], exif[ORIENTATION] = 'TestMaker', 'TestCam 1', 6
    Image.fromarray(np.rot90(colour, 1)).save(path, quality=95, icc_profile=icc, exif=exif)  # stored turned back
    return icc


def test_orientation_profile_and_exif(tmp_path, official_weights, model, colour):
    source = tmp_path / 'phone.jpg'
    icc = jpeg_with_metadata(source, colour)
    shown = ImageOps.exif_transpose(Image.open(source))
    assert shown.size == (24, 20)
    stored = cv2.imread(str(source), cv2.IMREAD_UNCHANGED)[:, :, ::-1]  # the decoder inference uses, as stored
    png = Image.open(upscale(source, tmp_path / 'sr.png', official_weights))
    assert png.size == (48, 40) and png.info.get('icc_profile') == icc
    assert close(np.asarray(png), quantised(rendered(model, np.ascontiguousarray(np.rot90(stored, -1)))))
    assert png.getexif().get(ORIENTATION, 1) == 1 and png.getexif()[MAKE] == 'TestMaker'

    for suffix in ('.jpg', '.webp', '.tif'):
        out = Image.open(upscale(source, tmp_path / f'sr{suffix}', official_weights))
        exif = out.getexif()
        assert out.size == (48, 40) and out.info.get('icc_profile') == icc, suffix
        assert exif[MAKE] == 'TestMaker' and exif[MODEL] == 'TestCam 1' and exif.get(ORIENTATION, 1) == 1, suffix
    stripped = Image.open(upscale(source, tmp_path / 'bare.jpg', official_weights, '--strip_metadata=True'))
    assert MAKE not in stripped.getexif() and stripped.info.get('icc_profile') == icc


def test_what_a_format_cannot_hold_is_named_in_one_warning(tmp_path, official_weights, colour, disc, capsys):
    Image.fromarray(np.dstack([colour, disc])).save(tmp_path / 'rgba.png')
    out = Image.open(upscale(tmp_path / 'rgba.png', tmp_path / 'sr.jpg', official_weights, '--quality=90'))
    assert out.mode == 'RGB'
    err = capsys.readouterr().err.splitlines()
    assert [line for line in err if line.startswith('warning:')] == [next(e for e in err if 'alpha' in e)]
    cv2.imwrite(str(tmp_path / 'g16.png'), gradient16())
    out = Image.open(upscale(tmp_path / 'g16.png', tmp_path / 'sr.webp', official_weights))
    assert out.mode == 'RGB'  # WebP holds 8-bit RGB(A) only
    assert any(line.startswith('warning:') and '16-bit' in line for line in capsys.readouterr().err.splitlines())


def test_folders_keep_formats_mirror_subfolders_and_skip_finished(tmp_path, official_weights, colour, disc, capsys):
    source = tmp_path / 'in'
    (source / 'sub').mkdir(parents=True)
    Image.fromarray(np.dstack([colour, disc])).save(source / 'a.png')
    Image.fromarray(colour).save(source / 'sub' / 'b.jpg', quality=95)
    args = [f'--input={source}', f'--output={tmp_path / "out"}', f'--weights={official_weights}', '--size=[8,9]',
            '--device=cpu']
    assert inference.main(args) == [tmp_path / 'out' / 'a_8x9.png']  # not recursive: the top folder only
    written = inference.main([*args, '--recursive=True'])
    assert written == [tmp_path / 'out' / 'sub' / 'b_8x9.jpg']  # a_8x9.png is there already
    assert 'skipping 1 of 2' in capsys.readouterr().out
    assert Image.open(written[0]).format == 'JPEG' and Image.open(tmp_path / 'out' / 'a_8x9.png').mode == 'RGBA'
    webp = inference.main([*args, '--recursive=True', '--format=webp'])
    assert webp == [tmp_path / 'out' / 'a_8x9.webp', tmp_path / 'out' / 'sub' / 'b_8x9.webp']
    assert Image.open(webp[0]).mode == 'RGBA'


def unsupported(folder: Path, kind: str) -> Path:
    if kind == 'float':
        Image.fromarray(np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8)).save(folder / 'float.tif')
        return folder / 'float.tif'
    Image.fromarray(np.full((8, 8), 128, np.uint8)).save(folder / 'alpha.tif', tiffinfo={338: 2})  # ExtraSamples
    return folder / 'alpha.tif'  # its one sample is an alpha channel, no colour


def test_unsupported_inputs_are_one_error_line_and_nothing_written(tmp_path, official_weights):
    source = unsupported(tmp_path, 'float')
    done = subprocess.run([sys.executable, 'inference.py', f'--input={source}', f'--output={tmp_path / "o.png"}',
                           f'--weights={official_weights}', '--device=cpu'], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 2 and done.stderr.startswith('error: ') and source.name in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and not (tmp_path / 'o.png').exists()
    with pytest.raises(ValueError, match='alpha.tif has an unsupported layout'):  # run_main: one error line
        upscale(unsupported(tmp_path, 'alpha only'), tmp_path / 'o.png', official_weights)
    assert not (tmp_path / 'o.png').exists()


def test_training_and_test_readers_show_the_image_as_turned(tmp_path, colour):
    """load_image (training, test.py, make_figure) applies EXIF orientation too; header sizes follow."""
    jpeg_with_metadata(tmp_path / 'phone.jpg', colour)
    stored = cv2.imread(str(tmp_path / 'phone.jpg'), cv2.IMREAD_UNCHANGED)[:, :, ::-1]
    assert np.array_equal(load_image(tmp_path / 'phone.jpg'), np.rot90(stored, -1))
    assert header_size(tmp_path / 'phone.jpg') == (20, 24)


@pytest.mark.parametrize('orientation', range(1, 9))
def test_every_orientation_is_shown_as_pillow_shows_it(tmp_path, colour, orientation):
    """load_image turns the stored pixels as PIL.ImageOps.exif_transpose does, for each of the eight EXIF
    orientations (a lossless PNG with an eXIf chunk: the two decoders give the same samples)."""
    exif = Image.Exif()
    exif[ORIENTATION] = orientation
    Image.fromarray(colour).save(tmp_path / 'turned.png', exif=exif)
    shown = np.asarray(ImageOps.exif_transpose(Image.open(tmp_path / 'turned.png')).convert('RGB'))
    assert np.array_equal(load_image(tmp_path / 'turned.png'), shown)
    assert header_size(tmp_path / 'turned.png') == shown.shape[:2]


def test_the_viewer_shows_the_alpha_it_renders(tmp_path, official_weights, model, colour, disc):
    Image.fromarray(np.dstack([colour, disc])).save(tmp_path / 'rgba.png')
    whole = np.asarray(Image.open(upscale(tmp_path / 'rgba.png', tmp_path / 'sr.png', official_weights)))
    shown = Viewer(tmp_path / 'rgba.png', model)
    view = shown.render(View('liif', SCALE, 5, 6, 30, 40))
    assert np.array_equal(view, whole[5:35, 6:46])  # RGBA, as inference.py writes it
    assert shown.render(View('bicubic', SCALE, 0, 0, 40, 48)).shape == (40, 48, 4)


def test_onnx_weights_give_the_same_rgba(tmp_path, official_weights, colour, disc):
    from scripts.export_onnx import export_checked
    export_checked(official_weights, tmp_path / 'liif.onnx')
    Image.fromarray(np.dstack([colour, disc])[2:18, 4:20]).save(tmp_path / 'rgba.png')
    onnx = np.asarray(Image.open(upscale(tmp_path / 'rgba.png', tmp_path / 'onnx.png', tmp_path / 'liif.onnx')))
    torch_made = np.asarray(Image.open(upscale(tmp_path / 'rgba.png', tmp_path / 'pt.png', official_weights)))
    assert onnx.shape == (32, 32, 4) and close(onnx, torch_made)  # the export agrees to 1e-5 before rounding
