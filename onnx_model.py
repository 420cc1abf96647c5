"""A model as one self-contained ONNX file that renders any window of any size, and its use through
ONNX Runtime (no PyTorch in the rendering).

The graph's inputs: `lr` float32 (B, 3, h', w') in [0, 1] (B, h', w' dynamic), a crop of the whole LR
image; `lr_frame` int64 (4,) = (top, left, h, w), where the crop starts in the whole h x w image;
`size` int64 (2,) = (H, W), the whole output; `window` int64 (4,) = (top, left, height, width). Its
output `sr` float32 (B, 3, height, width) holds the values render.render gives for that window of the
whole image (unclamped), provided the crop holds the LR rectangle `lr_crop` names (the whole image
always does). Inside, the graph makes render.py's per-axis look-ups of the window, slices the LR
region they read plus the model's margin, encodes only that, and decodes with integer gathers (no
grid_sample) in a fixed number of blocks (render.GRAPH_BLOCKS), so a caller renders a big output window
by window in bounded memory, each run fed only its crop. The file's metadata holds the model's options
(`liif_options`) and the crop's reach (`liif_reach`), so a file is known for what it holds.
"""
import importlib
import json
import math
import warnings
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from imgproc import image_to_tensor, read_image
from render import GRAPH_BLOCKS, check_window, decode_grid, encode_region, window_lookups

OPSET = 17  # the oldest opset current ONNX Runtime runs well; every op used here exists in it
INPUTS = {'lr': 'tensor(float)', 'lr_frame': 'tensor(int64)', 'size': 'tensor(int64)', 'window': 'tensor(int64)'}
OPTIONS_KEY, REACH_KEY = 'liif_options', 'liif_reach'
# Output pixels per graph run when not given: 512 x 512 windows of one image. A run decodes in
# render.GRAPH_BLOCKS blocks, here of render.CPU_BLOCK_ROWS rows (1024 queries x 4 members), so the
# activations stay in cache; smaller windows re-encode their LR margin more often.
WINDOW_QUERIES = 1 << 18
CHECK_TOL = 1e-5  # ONNX Runtime vs PyTorch, fp32: summation orders differ (measured up to ~3e-6)
CHECK_IMAGE = Path(__file__).resolve().parent / 'figure' / 'example_lr.png'


def need(name: str):
    """Import onnx or onnxruntime (only the ONNX paths need them), or say how to install them."""
    try:
        return importlib.import_module(name)
    except ImportError:
        raise ValueError(f"the ONNX paths need the {name} package: pip install -r requirements.txt") from None


class WindowGraph(torch.nn.Module):
    """render.render of one window as a traceable function of tensors: the LR size, the output size
    and the window are 0-d int64 tensors, so the exported graph computes them for every input."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, lr: torch.Tensor, lr_frame: torch.Tensor, size: torch.Tensor, window: torch.Tensor) -> torch.Tensor:
        top, left, h, w = lr_frame.unbind()
        rows, cols = window_lookups(self.model, (size[0], size[1]), tuple(window.unbind()), (h, w))
        return decode_grid(self.model, *encode_region(self.model, lr, rows, cols, (h, w), offset=(top, left)))


def reach(model: torch.nn.Module) -> int:
    """LR pixels around a window's scaled extent that its look-ups and the model's margin may read: the
    margin (render.lr_region), one pixel for the local ensemble's half-pixel shift beyond the outer pixel
    centres, one more for float rounding at a pixel's edge. The tests check it against render.py's rule."""
    return model.tile_margin + 2


def lr_crop(size: tuple[int, int], window: tuple[int, int, int, int], lr_size: tuple[int, int],
            reach: int) -> tuple[int, int, int, int]:
    """(top, left, bottom, right): the LR rows [top, bottom) and columns [left, right) a graph run of
    `window` in the `size` render of an `lr_size` image reads: the window scaled to the LR image, widened
    by `reach`, clipped to it.
    Integer arithmetic only (liif.js does the same in doubles, exact below 2^53)."""
    (height, width), (top, left, rows, cols), (h, w) = size, window, lr_size
    return (max(0, top * h // height - reach), max(0, left * w // width - reach),
            min(h, -(-(top + rows) * h // height) + reach), min(w, -(-(left + cols) * w // width) + reach))


@torch.no_grad()
def export(model: torch.nn.Module, path: str | Path, opset: int = OPSET) -> None:
    """Write `model` (in eval mode, fp32) as one ONNX file at `path`, its options in the metadata."""
    onnx = need('onnx')
    graph = WindowGraph(model.float().eval())
    example = (torch.rand(1, 3, 20, 17), torch.tensor([0, 0, 20, 17]), torch.tensor([43, 37]),
               torch.tensor([3, 4, 30, 25]))
    # LIIF decodes in one block while grad is enabled (as in training): a loop over blocks would be
    # unrolled at the example's size. The exporter's notes (legacy exporter, index ops with negative
    # indices, which never occur here) are silenced.
    with torch.enable_grad(), warnings.catch_warnings():
        warnings.simplefilter('ignore')
        torch.onnx.export(graph, example, str(path), dynamo=False, opset_version=opset,
                          input_names=list(INPUTS), output_names=['sr'],
                          dynamic_axes={'lr': {0: 'batch', 2: 'h', 3: 'w'},
                                        'sr': {0: 'batch', 2: 'height', 3: 'width'}})
    proto = onnx.load(str(path))
    onnx.helper.set_model_props(proto, {OPTIONS_KEY: json.dumps(model.options), REACH_KEY: str(reach(model))})
    onnx.save(proto, str(path))


class OnnxModel:
    """An exported file in an ONNX Runtime session: `options` (the model's), `render` (numpy)."""

    def __init__(self, path: str | Path, threads: int = 0):
        ort = need('onnxruntime')
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"ONNX file {path} does not exist")
        settings = ort.SessionOptions()
        settings.intra_op_num_threads = threads
        settings.log_severity_level = 3  # ONNX Runtime's own errors become one ValueError below
        try:
            self.session = ort.InferenceSession(str(path), settings, providers=['CPUExecutionProvider'])
        except Exception as e:  # onnxruntime raises its own exception types
            raise ValueError(f"{path} is not a readable ONNX file: {' '.join(str(e).split())[:200]}") from None
        inputs = {i.name: i.type for i in self.session.get_inputs()}
        meta = self.session.get_modelmeta().custom_metadata_map
        if inputs != INPUTS or not {OPTIONS_KEY, REACH_KEY} <= set(meta) or len(self.session.get_outputs()) != 1:
            raise ValueError(f"{path} is an ONNX file of another model (inputs {inputs}), not one written by "
                             f"this version of scripts/export_onnx.py (export it again)")
        self.options, self.reach = json.loads(meta[OPTIONS_KEY]), int(meta[REACH_KEY])
        self.path = path

    def run(self, lr: np.ndarray, size: tuple[int, int], window: tuple[int, int, int, int]) -> np.ndarray:
        """One graph run: the (B, 3, height, width) window of the `size` render of lr (B, 3, h, w)."""
        return self.session.run(None, self.feed(lr, size, window))[0]

    def feed(self, lr: np.ndarray, size: tuple[int, int], window: tuple[int, int, int, int]) -> dict:
        """The graph's inputs for `window`: the crop of lr it reads (lr_crop) and where that crop starts."""
        top, left, bottom, right = lr_crop(size, window, lr.shape[-2:], self.reach)
        return {'lr': np.ascontiguousarray(lr[:, :, top:bottom, left:right], dtype=np.float32),
                'lr_frame': np.asarray([top, left, *lr.shape[-2:]], dtype=np.int64),
                'size': np.asarray(size, dtype=np.int64), 'window': np.asarray(window, dtype=np.int64)}

    def render(self, lr: np.ndarray, size: tuple[int, int], window: tuple[int, int, int, int] | None = None,
               queries: int = WINDOW_QUERIES, progress: bool = False) -> np.ndarray:
        """As render.render: the (B, 3, H, W) output of `size`, or its `window`, in graph runs of at most
        `queries` output pixels over the batch (memory follows `queries`, not the output)."""
        if lr.ndim != 4 or lr.shape[1] != 3:
            raise ValueError(f"lr must be (B, 3, h, w), got {tuple(lr.shape)}")
        top, left, height, width = check_window(window, tuple(int(n) for n in size))
        out = np.empty((lr.shape[0], 3, height, width), np.float32)
        pieces = list(split_window(height, width, max(1, queries // lr.shape[0])))
        with tqdm(total=lr.shape[0] * height * width, unit='px', unit_scale=True, disable=not progress,
                  leave=False, mininterval=1) as bar:
            for r, c, h, w in pieces:
                out[:, :, r:r + h, c:c + w] = self.run(lr, size, (top + r, left + c, h, w))
                bar.update(lr.shape[0] * h * w)
        return out


def window_queries(chunk: int) -> int:
    """Output pixels per graph run for `chunk` queries per decoder call (the `chunk` setting; 0: not set):
    a run decodes in GRAPH_BLOCKS blocks, so chunk x GRAPH_BLOCKS, at most WINDOW_QUERIES."""
    return min(WINDOW_QUERIES, chunk * GRAPH_BLOCKS) if chunk else WINDOW_QUERIES


def split_window(height: int, width: int, queries: int):
    """(top, left, height, width) pieces tiling a height x width window, each of at most `queries`
    pixels and as square as the window allows (the LR margin each piece encodes is then smallest)."""
    cols = min(width, max(1, math.isqrt(queries)))
    rows = min(height, max(1, queries // cols))
    for r in range(0, height, rows):
        for c in range(0, width, cols):
            yield r, c, min(rows, height - r), min(cols, width - c)


def self_check(path: str | Path, model: torch.nn.Module) -> float:
    """The largest |ONNX Runtime - PyTorch| of the file at `path` against `model` on a real image
    (a 29 x 26 crop of figure/example_lr.png at x2.7 by x3.1), for the whole output and two windows
    run through the same session."""
    lr = image_to_tensor(read_image(CHECK_IMAGE))[None, :, 40:69, 50:76]
    size = (78, 81)
    session = OnnxModel(path, threads=0)
    worst = 0.0
    for window in [None, (5, 60, 40, 21), (77, 0, 1, 81)]:
        expected = model.render(lr, size, window=window).numpy()
        worst = max(worst, float(np.abs(session.render(lr.numpy(), size, window) - expected).max()))
    return worst
