"""The models: one contract (SRModel), one registry (MODELS), the encoders, LIIF, MetaSR, the
fixed-scale EDSR-baseline / RDN baselines and LTE.

LIIF: Chen, Liu, Wang, "Learning Continuous Image Representation with Local Implicit Image Function",
CVPR 2021. MetaSR: Hu et al., "Meta-SR", CVPR 2019, as the LIIF paper's baseline. LTE: Lee and Jin,
"Local Texture Estimator for Implicit Representation Function", CVPR 2022. Parameter names follow the
official releases so their checkpoints load unchanged.

Conventions: `lr` is (B, 3, h, w) RGB in [0, 1]; `coord` and `cell` are (B, Q, 2), row axis first,
in the [-1, 1] square whose pixel centres are -1 + (2i + 1) / n. Every model maps `model(lr, coord,
cell)` to RGB (B, Q, 3) in [0, 1] units; inside, as in the official recipe, the encoder sees
(lr - 0.5) / 0.5 and the output is scaled back by * 0.5 + 0.5 (normalise and denormalise).

LIIF here is the paper's algorithm alone; its fast path, fast_liif.FastLIIF, is a subclass computing the
same function, and what build_model gives unless fast=False.

Adding a model: a subclass of SRModel that fills in the contract below, decorated with @register.
Everything else (the settings' checks, --help, build_model, checkpoints in both formats, render.py,
the three scripts, the viewer, the ONNX export) reads the registry. docs/models.md walks through it.
"""
import reprlib
from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

import render as engine
from precision import linear
from render import Lookup, batch_index, decoder_rows, in_blocks, nearest_index, pair, pixel_centres, ratio

UPSAMPLE_FACTORS = {2: [2], 3: [3], 4: [2, 2], 8: [2, 2, 2]}  # pixel-shuffle stages per up-sampler scale


def conv3x3(cin: int, cout: int) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, padding=1)


def shuffle_stages(cin: int, feats: int, scale: int) -> list[nn.Module]:
    """The sub-pixel up-sampler of EDSR and RDN: per stage a conv to feats * f^2 channels and a
    PixelShuffle(f); f = 2 per octave for 2, 4, 8, one stage of 3 for 3."""
    layers = []
    for f in UPSAMPLE_FACTORS[scale]:
        layers += [conv3x3(cin, feats * f * f), nn.PixelShuffle(f)]
        cin = feats
    return layers


class ResBlock(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.body = nn.Sequential(conv3x3(ch, ch), nn.ReLU(inplace=True), conv3x3(ch, ch))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class EDSR(nn.Module):
    """EDSR-baseline: head conv, residual blocks, a last conv, global skip; with upsample_scale, the
    up-sampler `tail` (pixel-shuffle stages, then a conv to RGB) gives the x2/x3/x4/x8 network."""

    def __init__(self, n_resblocks: int = 16, n_feats: int = 64, upsample_scale: int = 0):
        super().__init__()
        self.head = nn.Sequential(conv3x3(3, n_feats))
        self.body = nn.Sequential(*[ResBlock(n_feats) for _ in range(n_resblocks)], conv3x3(n_feats, n_feats))
        self.out_dim = n_feats
        self.receptive_radius = 2 * n_resblocks + 2  # 3x3 convs on the longest path, in LR pixels
        self.peak_channels = 6 * n_feats  # float maps alive at once per LR pixel during forward (for tile sizing)
        if upsample_scale:
            self.tail = nn.Sequential(nn.Sequential(*shuffle_stages(n_feats, n_feats, upsample_scale)),
                                      conv3x3(n_feats, 3))
            self.out_dim = 3
            self.receptive_radius += len(UPSAMPLE_FACTORS[upsample_scale]) + 1  # each conv reaches <= 1 LR pixel
            self.peak_channels += 2 * n_feats * upsample_scale ** 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.head(x)
        x = x + self.body(x)
        return self.tail(x) if hasattr(self, 'tail') else x


class RDBConv(nn.Module):
    def __init__(self, cin: int, growth: int):
        super().__init__()
        self.conv = nn.Sequential(conv3x3(cin, growth), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, self.conv(x)], 1)


class RDB(nn.Module):
    def __init__(self, g0: int, growth: int, n_layers: int):
        super().__init__()
        self.convs = nn.Sequential(*[RDBConv(g0 + i * growth, growth) for i in range(n_layers)])
        self.LFF = nn.Conv2d(g0 + n_layers * growth, g0, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.LFF(self.convs(x))


class RDN(nn.Module):
    """RDN configuration B (16 blocks of 8 layers, growth 64), G0 = 64; with upsample_scale, the
    up-sampler `UPNet` (pixel-shuffle stages of `growth` channels, then a conv to RGB), x2/x3/x4."""

    def __init__(self, g0: int = 64, n_blocks: int = 16, n_layers: int = 8, growth: int = 64,
                 upsample_scale: int = 0):
        super().__init__()
        self.SFENet1 = conv3x3(3, g0)
        self.SFENet2 = conv3x3(g0, g0)
        self.RDBs = nn.ModuleList([RDB(g0, growth, n_layers) for _ in range(n_blocks)])
        self.GFF = nn.Sequential(nn.Conv2d(n_blocks * g0, g0, 1), conv3x3(g0, g0))
        self.out_dim = g0
        self.receptive_radius = 2 + n_blocks * n_layers + 1
        # the block outputs kept for GFF, their concatenation, and a block's growing dense stack
        self.peak_channels = 2 * n_blocks * g0 + 2 * (g0 + n_layers * growth)
        if upsample_scale:
            self.UPNet = nn.Sequential(*shuffle_stages(g0, growth, upsample_scale), conv3x3(growth, 3))
            self.out_dim = 3
            self.receptive_radius += len(UPSAMPLE_FACTORS[upsample_scale]) + 1
            self.peak_channels += 2 * growth * upsample_scale ** 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f1 = self.SFENet1(x)
        x = self.SFENet2(f1)
        outs = []
        for block in self.RDBs:
            x = block(x)
            outs.append(x)
        x = f1 + self.GFF(torch.cat(outs, 1))
        return self.UPNet(x) if hasattr(self, 'UPNet') else x


class MLP(nn.Module):
    def __init__(self, in_dim: int, out_dim: int, hidden_list: list[int]):
        super().__init__()
        layers = []
        for hidden in hidden_list:
            layers += [nn.Linear(in_dim, hidden), nn.ReLU()]
            in_dim = hidden
        layers.append(nn.Linear(in_dim, out_dim))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


# ---------------------------------------------------------------- the contract and the registry

class Encoder(NamedTuple):
    """An encoder: its class, its name in papers' titles, the scales its own up-sampler has."""
    cls: type[nn.Module]
    title: str
    upsample_scales: tuple[int, ...]


ENCODERS = {'edsr-baseline': Encoder(EDSR, 'EDSR-baseline', (2, 3, 4, 8)), 'rdn': Encoder(RDN, 'RDN', (2, 3, 4))}


def normalise(x: torch.Tensor) -> torch.Tensor:
    """[0, 1] values in the units the models work in, (x - 0.5) / 0.5 as the official data_norm (the
    encoder's input, the training objective's); an image goes channels_last on CUDA (faster cuDNN)."""
    if x.is_cuda and x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    return (x - 0.5) / 0.5


def denormalise(y: torch.Tensor) -> torch.Tensor:
    """A decoder's output in [0, 1] units: the inverse of normalise."""
    return y * 0.5 + 0.5


class SRModel(nn.Module):
    """What every model provides. The class: `name` (the `model` setting, the name in this project's
    checkpoints), `settings` (the config.py settings besides model and encoder that shape it, with a
    check for each in `option_rules`), and its maths for render.py:
    - `encode(lr) -> latent` (B, C, h * k, w * k), k = `latent_scale`;
    - `lookup(c, n, cell) -> Lookup` for one axis of n LR pixels: the latent indices (S, ...) a
      coordinate reads, relative coordinates (S, ...) and the decoder's cell term;
    - `decode(latent, rows, cols) -> rgb (*Q, 3)` from both axes' look-ups, broadcast to Q = (B, ...).
    The rest has defaults a model overrides where they do not fit: `build` (an encoder from ENCODERS
    passed to __init__), `official` (its name in official checkpoints) and `from_official`,
    `option_problems`, `title`, and the sizing hooks `tile_margin` (LR pixels of context one latent
    code needs), `bytes_per_query(device)` and `bytes_per_lr_pixel()`. An instance holds `encoder` and
    `options` (what rebuilds it: model, encoder and its settings; saved in checkpoints). The forward
    pass and the rendering are the engine's, the same for every model."""
    name: str
    settings: tuple[str, ...] = ()
    option_rules: dict = {}
    official: str | None = None
    latent_scale = 1  # latent pixels per LR pixel along each axis

    def __init__(self, encoder: nn.Module, encoder_name: str, **options):
        super().__init__()
        self.encoder = encoder
        self.options = dict(model=self.name, encoder=encoder_name, **options)

    @classmethod
    def build(cls, encoder: str, **options) -> 'SRModel':
        """The model with a new encoder of that name."""
        return cls(ENCODERS[encoder].cls(), encoder, **options)

    @classmethod
    def option_problems(cls, options: dict) -> list[str]:
        """What is wrong with `options` for this model beyond each setting's own rule (option_rules)."""
        return []

    @classmethod
    def from_official(cls, spec: dict) -> dict | None:
        """The options an official checkpoint's {'name', 'args'} spec describes when it is this model
        (KeyError: the spec lacks a field; ValueError: a variant this project does not build), else None."""
        return None

    @classmethod
    def title(cls, options: dict) -> str:
        """The model as the papers name it: 'EDSR-baseline-LIIF'."""
        return f"{ENCODERS[options['encoder']].title}-{cls.__name__}"

    @property
    def tile_margin(self) -> int:
        """The encoder's receptive radius and a 3x3 neighbourhood of latent codes."""
        return self.encoder.receptive_radius + 1

    def bytes_per_query(self, device: torch.device) -> int:
        """A generous 32 KiB a query (the reference LIIF needs 21.5 KiB)."""
        return 32 << 10

    def bytes_per_lr_pixel(self) -> int:
        """The encoder's peak and a latent of up to 9 codes (a 3x3 unfolding) per LR pixel, in fp32."""
        return 4 * (self.encoder.peak_channels + 9 * self.encoder.out_dim)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def forward(self, lr: torch.Tensor, coord: torch.Tensor, cell: torch.Tensor) -> torch.Tensor:
        return engine.query(self, self.encode(lr), coord, cell, lr.shape[-2:])

    def render(self, lr: torch.Tensor, size: tuple[int, int], chunk: int | None = None, amp: str = 'fp32',
               tile: int | None = None, memory_budget: int | None = None, progress: bool = False,
               window: tuple[int, int, int, int] | None = None) -> torch.Tensor:
        """The (B, 3, H, W) image of `size` (unclamped), or its `window` = (top, left, height, width)
        (B, 3, height, width); see render.render."""
        return engine.render(self, lr, size, chunk, amp, tile, memory_budget, progress, window)


MODELS: dict[str, type[SRModel]] = {}
OPTION_RULES: dict = {}  # setting -> rule(value) -> problem or None, from every registered model


def register(cls: type[SRModel]) -> type[SRModel]:
    """Add a model class to the registry (a decorator); its name must be new, its settings ruled."""
    if cls.name in MODELS:
        raise ValueError(f"a model named {cls.name!r} is registered already")
    if set(cls.settings) - set(cls.option_rules) - set(OPTION_RULES):
        raise ValueError(f"{cls.__name__}: no rule for {sorted(set(cls.settings) - set(cls.option_rules))}")
    MODELS[cls.name] = cls
    OPTION_RULES.update(cls.option_rules)
    return cls


def model_keys() -> list[str]:
    """Every model setting: model, encoder and each registered model's, in registration order."""
    return list(dict.fromkeys(['model', 'encoder', *(s for cls in MODELS.values() for s in cls.settings)]))


def option_problems(options: dict) -> list[str]:
    """What keeps build_model from building `options` (the model settings, or a checkpoint's options),
    one phrase per problem; [] when they are fine. Values are checked by type before `in` compares them
    (a tensor cannot be compared), and shown shortened (reprlib)."""
    model = options.get('model') if isinstance(options.get('model'), str) else None
    encoder = options.get('encoder') if isinstance(options.get('encoder'), str) else None
    problems = [f"unknown model option {reprlib.repr(key)}" for key in options if key not in model_keys()]
    if model not in MODELS:
        problems.append(f"model must be one of {', '.join(map(repr, MODELS))}, got {reprlib.repr(options.get('model'))}")
    if encoder not in ENCODERS:
        problems.append(f"encoder must be {' or '.join(map(repr, ENCODERS))}, "
                        f"got {reprlib.repr(options.get('encoder'))}")
    problems += [problem for key, rule in OPTION_RULES.items() if key in options
                 for problem in [rule(options[key])] if problem]
    if model in MODELS and encoder in ENCODERS:
        problems += MODELS[model].option_problems(options)
    return problems


def build_model(model: str = 'liif', encoder: str = 'edsr-baseline', fast: bool = True, **options) -> SRModel:
    """Any registered model from its options (the model settings); options that do not concern the
    chosen model are ignored, those option_problems finds fault with are refused. `fast`: the model's
    fast path where it has one (LIIF's: fast_liif.FastLIIF, the same function); False: the reference."""
    problems = option_problems(dict(model=model, encoder=encoder, **options))
    if problems:
        raise ValueError("cannot build the model: " + "; ".join(problems))
    cls = MODELS[model]
    if fast and cls is LIIF:
        import fast_liif  # it subclasses LIIF, so it imports this module: imported once this one is complete
        cls = fast_liif.FastLIIF
    return cls.build(encoder, **{k: v for k, v in options.items() if k in cls.settings})


def model_name(options: dict) -> str:
    """A model as the paper names it: 'EDSR-baseline-LIIF', 'RDN-MetaSR', 'EDSR-baseline x4'."""
    return MODELS[options['model']].title(options)


def switch_rule(name: str):
    return lambda value: None if isinstance(value, bool) else f"{name} must be True or False, got {reprlib.repr(value)}"


def hidden_list_rule(value) -> str | None:
    if not isinstance(value, (list, tuple)) or not value or any(type(n) is not int or n <= 0 for n in value):
        return f"hidden_list must be a non-empty list of positive ints, got {reprlib.repr(value)}"
    return None


def upsamples(encoder_spec: dict) -> bool:
    """Whether an official encoder spec keeps its up-sampler (no_upsampling not set)."""
    return not encoder_spec.get('args', {}).get('no_upsampling', False)


# ---------------------------------------------------------------- LIIF

def axis_lookups(c: torch.Tensor, n: int, local_ensemble: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Latent-code look-ups along one axis of length n for coordinates `c` (any shape).

    Returns indices (S, *c.shape) and relative coordinates (S, *c.shape) in feature-pixel units, one
    row per shift: S = 2 (shifts -1, +1 pixel) with local ensemble, else 1 (no shift). The index is
    the one `grid_sample(mode='nearest', align_corners=False)` picks, so ties break exactly as in the
    official code. A query's ensemble member (a, b) uses row shift a and column shift b.
    """
    shifts = (-1, 1) if local_ensemble else (0,)
    eps = 1e-6 if local_ensemble else 0
    centres = pixel_centres(n, c.device)
    index, rel = [], []
    for v in shifts:
        i = nearest_index((c + ratio(v, n, eps)).clamp_(-1 + 1e-6, 1 - 1e-6), n)
        index.append(i)
        rel.append((c - centres[i]) * n)
    return torch.stack(index), torch.stack(rel)


@register
class LIIF(SRModel):
    """The local implicit image function as the paper defines it, and nothing else: an encoder's
    feature map, unfolded to 3x3 neighbourhoods; per query, the four nearest latent codes (local
    ensemble), each decoded by an MLP from [code, query - code centre, cell] and blended by the area
    of the rectangle diagonally opposite. fast_liif.FastLIIF computes the same function faster (what
    build_model gives by default)."""
    name, official = 'liif', 'liif'
    settings = ('hidden_list', 'feat_unfold', 'local_ensemble', 'cell_decode')
    option_rules = {'hidden_list': hidden_list_rule, **{s: switch_rule(s) for s in settings[1:]}}

    def __init__(self, encoder: nn.Module, encoder_name: str, hidden_list: list[int] = (256, 256, 256, 256),
                 feat_unfold: bool = True, local_ensemble: bool = True, cell_decode: bool = True):
        super().__init__(encoder, encoder_name, hidden_list=list(hidden_list), feat_unfold=feat_unfold,
                         local_ensemble=local_ensemble, cell_decode=cell_decode)
        self.feat_unfold, self.local_ensemble, self.cell_decode = feat_unfold, local_ensemble, cell_decode
        self.feat_dim = encoder.out_dim * (9 if feat_unfold else 1)
        self.imnet = MLP(self.feat_dim + 2 + (2 if cell_decode else 0), 3, list(hidden_list))

    @classmethod
    def from_official(cls, spec: dict) -> dict | None:
        args = spec['args']
        if spec['name'] != 'liif' or 'imnet_spec' not in args:
            return None
        return dict(model='liif', encoder=args['encoder_spec']['name'],
                    hidden_list=list(args['imnet_spec']['args']['hidden_list']),
                    feat_unfold=args.get('feat_unfold', True), local_ensemble=args.get('local_ensemble', True),
                    cell_decode=args.get('cell_decode', True))

    def encode(self, lr: torch.Tensor) -> torch.Tensor:
        """The feature map; with feat_unfold each pixel's code is its 3x3 neighbourhood (zero padded)."""
        feat = self.encoder(normalise(lr))
        if self.feat_unfold:
            feat = F.unfold(feat, 3, padding=1).view(feat.shape[0], -1, *feat.shape[-2:])
        return feat

    def lookup(self, c: torch.Tensor, n: int, cell: torch.Tensor) -> Lookup:
        """The code shifted by -1 and +1 pixel (one unshifted without local ensemble); the cell in
        LR pixels times 2 (cell * n)."""
        index, rel = axis_lookups(c, n, self.local_ensemble)
        return Lookup(index, rel, cell * n if self.cell_decode else None)

    def decode(self, latent: torch.Tensor, rows: Lookup, cols: Lookup) -> torch.Tensor:
        """RGB (*Q, 3) in [0, 1] units (unclamped): per ensemble member (row shift major) the code, the
        MLP on [code, rel_y, rel_x, cell]; each prediction weighted by the area diagonally opposite."""
        table = latent.permute(0, 2, 3, 1)  # (B, h, w, C)
        batch = batch_index(latent.shape[0], rows.index)
        preds, areas = [], []
        for iy, ry in zip(rows.index, rows.rel):
            for ix, rx in zip(cols.index, cols.rel):
                q_feat = table[batch, iy, ix]
                rel = pair(ry, rx).expand(*q_feat.shape[:-1], 2)
                parts = [q_feat, rel] + ([pair(rows.cell, cols.cell).expand_as(rel)] if self.cell_decode else [])
                preds.append(self.imnet(torch.cat(parts, -1)))
                areas.append((rel[..., 0] * rel[..., 1]).abs() + 1e-9)
        total = torch.stack(areas).sum(0)
        out = sum(pred * (area / total).unsqueeze(-1) for pred, area in zip(preds, reversed(areas)))
        return denormalise(out)

    def bytes_per_query(self, device: torch.device) -> int:
        # four (feat_dim + 4)-wide inputs and the hidden activations of the full MLP
        members = 4 if self.local_ensemble else 1
        return members * (self.feat_dim + 4 + 3 * max(self.options['hidden_list'])) * 4

    def bytes_per_lr_pixel(self) -> int:
        return 4 * (self.encoder.peak_channels + self.feat_dim)


def member_inputs(iy, ix, ry, rx, row_stride: int, offset, rel_cell):
    """The local ensemble's members for a batched decoder (FastLIIF and LTE), queries of (broadcast)
    shape Q, members last.

    iy, ry: (Sy, *Q) and ix, rx: (Sx, *Q) from `axis_lookups` (broadcastable over Q); offset: the
    table row of each image's first pixel (broadcastable to Q); rel_cell: None or broadcastable to
    (*Q, 1, 2). Returns table rows (*Q, M), inputs [rel_y, rel_x(, cell_y, cell_x)] (*Q, M, K) and
    ensemble weights (*Q, M), M = Sy * Sx in the official member order.
    """
    index = iy.unsqueeze(1) * row_stride + ix.unsqueeze(0) + offset  # (Sy, Sx, *Q)
    rel_y, rel_x = ry.unsqueeze(1).expand(index.shape), rx.unsqueeze(0).expand(index.shape)
    area = (rel_y * rel_x).abs_() + 1e-9
    weight = area.flip((0, 1)) / area.sum((0, 1))  # the area diagonally opposite each member

    def members_last(t):
        return t.flatten(0, 1).movedim(0, -1)

    index = members_last(index)
    parts = [members_last(rel_y), members_last(rel_x)]
    if rel_cell is not None:  # stacked, not assigned into slices: an exported graph keeps dynamic shapes
        parts += [c.to(ry.dtype).expand_as(parts[0]) for c in rel_cell.unbind(-1)]
    return index, torch.stack(parts, -1), members_last(weight)


def table(latent: torch.Tensor) -> torch.Tensor:
    """(B*h*w, C) rows of a latent, one row per code, each row contiguous (free if channels_last; else
    one copy, without which every gathered row reads C cache lines)."""
    return latent.permute(0, 2, 3, 1).reshape(-1, latent.shape[1]).contiguous()


# ---------------------------------------------------------------- MetaSR

@register
class MetaSR(SRModel):
    """MetaSR as the official LIIF release defines it: per query, an MLP 3 -> 256 -> C*9*3 turns
    [rel_y, rel_x, cell_y * h / 2] into a (C*9, 3) filter applied to the 3x3-unfolded latent code
    of the LR pixel holding the top-left corner of the query's cell (+1e-6, clamped into the square).
    rel is that corner minus the pixel's top-left corner, times (h/2, w/2): in LR pixels. The cell
    input is the cell's height times h/2 only, as in the official code. No local ensemble."""

    name, official = 'metasr', 'metasr'

    def __init__(self, encoder: nn.Module, encoder_name: str):
        super().__init__(encoder, encoder_name)
        self.imnet = MLP(3, encoder.out_dim * 9 * 3, [256])

    @classmethod
    def from_official(cls, spec: dict) -> dict | None:
        if upsamples(spec['args']['encoder_spec']):
            raise ValueError("its MetaSR has an up-sampling encoder (no_upsampling is not set)")
        return dict(model='metasr', encoder=spec['args']['encoder_spec']['name'])

    def encode(self, lr: torch.Tensor) -> torch.Tensor:
        return self.encoder(normalise(lr))

    def lookup(self, c: torch.Tensor, n: int, cell: torch.Tensor) -> Lookup:
        corner = c - cell / 2  # the top-left corner of the query's cell
        index = nearest_index((corner + 1e-6).clamp(-1 + 1e-6, 1 - 1e-6), n)
        pixel_corner = pixel_centres(n, c.device)[index] - ratio(1, n)
        # * n / 2 (halving is exact) equals * (n / 2): the same float32 values, and a 0-d cell stays float32
        return Lookup(index[None], ((corner - pixel_corner) * n / 2)[None], cell * n / 2)

    def decode(self, latent: torch.Tensor, rows: Lookup, cols: Lookup) -> torch.Tensor:
        b, _, h, w = latent.shape
        codes = table(F.pad(latent, (1, 1, 1, 1)))  # the unfolding's zero padding; rows of (h + 2) x (w + 2)
        index = (batch_index(b, rows.index) * (h + 2) + rows.index[0]) * (w + 2) + cols.index[0]  # top-left tap
        k = torch.arange(3, device=latent.device)
        taps = (k * (w + 2)).repeat_interleave(3) + k.repeat(3)  # table rows of the 3x3 taps from the top-left one
        index, rel_y, rel_x = torch.broadcast_tensors(index, rows.rel[0], cols.rel[0])
        inputs = torch.stack([rel_y, rel_x, rows.cell.expand_as(rel_y)], -1)
        per_query = (index.flatten(), inputs.flatten(0, -2))
        step = decoder_rows(latent.device) or index.numel()  # one decoder row per query
        rgb = in_blocks(lambda *block: self._decode_block(codes, taps, *block), per_query, step)
        return rgb.view(*index.shape, 3)

    def _decode_block(self, table, taps, index, inputs) -> torch.Tensor:
        """RGB (n, 3) of n queries: index (n,) the table row of the top-left tap, inputs (n, 3)."""
        code = table.index_select(0, (index.unsqueeze(-1) + taps).flatten()).view(index.shape[0], 9, -1)
        q_feat = code.transpose(1, 2).flatten(1)  # (n, C*9), channel c * 9 + tap as F.unfold orders it
        filters = self.imnet(inputs).unflatten(-1, (q_feat.shape[1], 3))
        return denormalise((q_feat.unsqueeze(1) @ filters).squeeze(1))

    def bytes_per_query(self, device: torch.device) -> int:
        # index and inputs; the 9 taps, the unfolded code, the filter and the hidden layer count only where a
        # whole chunk is one decoder block
        whole = decoder_rows(device) is None
        return 4 * (2 + 3 + whole * (self.encoder.out_dim * 9 * 2 + self.encoder.out_dim * 9 * 3 + 256 + 8))

    def bytes_per_lr_pixel(self) -> int:
        return 4 * (self.encoder.peak_channels + 2 * self.encoder.out_dim)


# ---------------------------------------------------------------- fixed-scale baselines

@register
class Upsample(SRModel):
    """A fixed-scale network (EDSR-baseline or RDN with its own up-sampler), used as the official
    LIIF without a decoder: the value at a query is the up-sampled image's pixel found by nearest
    look-up at the query's coordinate. At its own scale this is plain EDSR / RDN super-resolution."""

    name, official, settings = 'upsample', 'liif', ('upsample_scale',)
    option_rules = {'upsample_scale': lambda value: None}  # its values depend on the encoder: option_problems

    def __init__(self, encoder: nn.Module, encoder_name: str, upsample_scale: int):
        super().__init__(encoder, encoder_name, upsample_scale=upsample_scale)
        self.latent_scale = upsample_scale

    @classmethod
    def build(cls, encoder: str, upsample_scale: int = 2) -> 'Upsample':
        return cls(ENCODERS[encoder].cls(upsample_scale=upsample_scale), encoder, upsample_scale)

    @classmethod
    def option_problems(cls, options: dict) -> list[str]:
        scale, scales = options.get('upsample_scale'), list(ENCODERS[options['encoder']].upsample_scales)
        if type(scale) is not int or scale not in scales:
            return [f"upsample_scale must be one of {scales} for the {options['encoder']} up-sampler, "
                    f"got {reprlib.repr(scale)}"]
        return []

    @classmethod
    def from_official(cls, spec: dict) -> dict | None:
        """The official `liif` model without a decoder (imnet_spec) over an up-sampling encoder."""
        args = spec['args']
        if spec['name'] != 'liif' or 'imnet_spec' in args:
            return None
        if not upsamples(args['encoder_spec']):
            raise KeyError('imnet_spec')
        return dict(model='upsample', encoder=args['encoder_spec']['name'],
                    upsample_scale=args['encoder_spec']['args'].get('scale', 2))

    @classmethod
    def title(cls, options: dict) -> str:
        return f"{ENCODERS[options['encoder']].title} x{options['upsample_scale']}"

    def encode(self, lr: torch.Tensor) -> torch.Tensor:
        return self.encoder(normalise(lr))

    def lookup(self, c: torch.Tensor, n: int, cell: torch.Tensor) -> Lookup:
        return Lookup(nearest_index(c, n * self.latent_scale)[None], None, None)

    def decode(self, latent: torch.Tensor, rows: Lookup, cols: Lookup) -> torch.Tensor:
        sr = latent.permute(0, 2, 3, 1)
        return denormalise(sr[batch_index(latent.shape[0], rows.index), rows.index[0], cols.index[0]])

    @property
    def tile_margin(self) -> int:
        return self.encoder.receptive_radius

    def bytes_per_query(self, device: torch.device) -> int:
        return 64

    def bytes_per_lr_pixel(self) -> int:
        return 4 * self.encoder.peak_channels


# ---------------------------------------------------------------- LTE

def hidden_dim_rule(value) -> str | None:
    """LTE's hidden_dim: a positive even int (cos and sin of hidden_dim / 2 phases)."""
    if type(value) is not int or value <= 0 or value % 2:
        return f"hidden_dim must be a positive even int, got {reprlib.repr(value)}"
    return None


def official_lte_options(model_spec: dict) -> dict:
    """The model options of an official LTE checkpoint's {'name': 'lte', 'args': ...} spec; one
    ValueError saying what is wrong for a spec this project does not build."""
    try:
        args = model_spec['args']
        encoder = args['encoder_spec']
        imnet = args['imnet_spec']
        up = upsamples(encoder)
        mlp = imnet['name'] == 'mlp' and imnet['args'].get('out_dim', 3) == 3
        options = dict(model='lte', encoder=encoder['name'], hidden_list=list(imnet['args']['hidden_list']),
                       hidden_dim=args.get('hidden_dim', 256))
    except (KeyError, TypeError, AttributeError) as e:
        raise ValueError(f"its LTE model spec is incomplete (no {e})") from None
    if up:
        raise ValueError("its LTE has an up-sampling encoder (no_upsampling is not set)")
    if not mlp:
        raise ValueError(f"its LTE decoder is not an MLP to RGB: {reprlib.repr(imnet)}")
    return options


def bilinear_taps(c: torch.Tensor, n) -> tuple[torch.Tensor, torch.Tensor]:
    """The two pixels (2, *c.shape) and their weights (2, *c.shape) that
    grid_sample(mode='bilinear', padding_mode='border', align_corners=False) blends at coordinates c
    on an axis of n pixels: the position ((c + 1) n - 1) / 2 clamped to [0, n - 1]; at n - 1 the upper
    tap has weight 0 (clamped onto the last pixel)."""
    p = (((c + 1) * n - 1) / 2).clamp(0, n - 1)
    low = p.floor()
    i0 = low.long()
    i1 = (i0 + 1).clamp(max=n - 1)
    return torch.stack([i0, i1]), torch.stack([low + 1 - p, p - low])


@register
class LTE(SRModel):
    """LTE (Lee and Jin, CVPR 2022), the official function (its parameter names, so its checkpoints load).

    The function, per query at coordinate x with cell c, LR size (h, w), encoder feature z:
    - amplitudes A = coef(z) and frequencies F = freq(z), 3x3 convolutions of z (hidden_dim channels each);
    - per ensemble member (the 4 nearest LR pixels, as LIIF's local ensemble): the member pixel's A and
      F, delta = (x - its centre) * (h, w), and the basis
      b_k = pi * (F[2k] * delta_y + F[2k + 1] * delta_x + phase_k(c_y * h, c_x * w)), k < hidden_dim / 2,
      with `phase` a bias-free Linear(2, hidden_dim / 2); the decoder input is A * [cos(b), sin(b)];
    - the members' MLP outputs blended by the area diagonally opposite each (LIIF's weights), plus the
      LR image sampled bilinearly at x (grid_sample, border padding, align_corners=False), all in the
      normalised units (lr - 0.5) / 0.5 and scaled back by * 0.5 + 0.5.

    Through the engine: the latent holds [A, F, normalised LR] per LR pixel, so a tile of it carries
    everything decode reads; a per-axis look-up has 4 rows: the two ensemble shifts (index, delta), then
    the two bilinear taps (index, weight) of the axis, so the skip is exact under windows and LR tiles.
    The default tile margin holds: the amplitude and frequency convolutions are 3x3, and the skip reads LR
    pixels inside the rectangle the look-ups span.
    """
    name, official = 'lte', 'lte'
    settings = ('hidden_list', 'hidden_dim')
    option_rules = {'hidden_dim': hidden_dim_rule}

    def __init__(self, encoder: nn.Module, encoder_name: str, hidden_list: list[int] = (256, 256, 256),
                 hidden_dim: int = 256):
        super().__init__(encoder, encoder_name, hidden_list=list(hidden_list), hidden_dim=hidden_dim)
        self.hidden_dim = hidden_dim
        self.coef = nn.Conv2d(encoder.out_dim, hidden_dim, 3, padding=1)
        self.freq = nn.Conv2d(encoder.out_dim, hidden_dim, 3, padding=1)
        self.phase = nn.Linear(2, hidden_dim // 2, bias=False)
        self.imnet = MLP(hidden_dim, 3, list(hidden_list))

    @classmethod
    def from_official(cls, spec: dict) -> dict | None:
        return official_lte_options(spec)

    def encode(self, lr: torch.Tensor) -> torch.Tensor:
        """(B, 2 * hidden_dim + 3, h, w): amplitudes, the frequencies' row components (the official
        channels 0, 2, 4, ...), their column components (1, 3, 5, ...), and the normalised LR image."""
        inp = normalise(lr)
        feat = self.encoder(inp)
        freq = self.freq(feat)
        # cat promotes: the image stays fp32 under autocast
        return torch.cat([self.coef(feat), freq[:, 0::2], freq[:, 1::2], inp], 1)

    def lookup(self, c: torch.Tensor, n: int, cell: torch.Tensor) -> Lookup:
        """Rows 0-1: the ensemble shifts -1, +1 (index, delta in LIIF's units); rows 2-3: the bilinear
        taps (index, weight). The cell term is the cell in the axis's LR units times 2, c * n."""
        index, rel = axis_lookups(c, n, local_ensemble=True)
        taps, weights = bilinear_taps(c, n)
        return Lookup(torch.cat([index, taps]), torch.cat([rel, weights]), cell * n)

    def decode(self, latent: torch.Tensor, rows: Lookup, cols: Lookup) -> torch.Tensor:
        """RGB (*Q, 3) in [0, 1] units (unclamped) from an `encode` output."""
        b, _, h, w = latent.shape
        offset = batch_index(b, rows.index) * (h * w)
        index, inputs, weight = member_inputs(rows.index[:2], cols.index[:2], rows.rel[:2], cols.rel[:2], w,
                                              offset, pair(rows.cell, cols.cell).unsqueeze(-2))
        taps, tap_rel, _ = member_inputs(rows.index[2:], cols.index[2:], rows.rel[2:], cols.rel[2:], w, offset, None)
        tap_weight = tap_rel[..., 0] * tap_rel[..., 1]  # the row weight times the column weight
        codes = table(latent)
        per_query = (index.flatten(0, -2), inputs.flatten(0, -3), weight.flatten(0, -2), taps.flatten(0, -2),
                     tap_weight.flatten(0, -2))
        step = (decoder_rows(latent.device) or index.numel()) // index.shape[-1]
        rgb = in_blocks(lambda *block: self._decode_block(codes, *block), per_query, step)
        return rgb.view(*index.shape[:-1], 3)

    def _decode_block(self, table, index, inputs, weight, taps, tap_weight) -> torch.Tensor:
        """RGB (n, 3) of n queries: index (n, M) table rows of the members, inputs (n, M, 4) = [delta_y,
        delta_x, cell_y * h, cell_x * w], weight (n, M); taps and tap_weight (n, 4), the bilinear skip's."""
        n, m = index.shape
        d = self.hidden_dim
        # the basis in fp32 at least: a bf16 phase of several periods keeps too little of its fraction
        dtype = torch.promote_types(table.dtype, torch.float32)
        code = table.index_select(0, index.flatten()).to(dtype)
        amplitude, freq_y, freq_x = code[:, :d], code[:, d:3 * d // 2], code[:, 3 * d // 2:2 * d]
        delta_y, delta_x, cell = inputs.flatten(0, 1).to(dtype).split([1, 1, 2], -1)
        phase = torch.addmm(torch.addcmul(freq_y * delta_y, freq_x, delta_x), cell, self.phase.weight.to(dtype).t())
        x = amplitude * torch.cat([torch.cos(torch.pi * phase), torch.sin(torch.pi * phase)], -1)
        layers = [layer for layer in self.imnet.layers if isinstance(layer, nn.Linear)]
        for i, layer in enumerate(layers):
            x = linear(x, layer.weight.to(x.dtype), layer.bias.to(x.dtype), relu=i < len(layers) - 1)
        rgb = (x.view(n, m, 3).to(dtype) * weight.unsqueeze(-1)).sum(1)
        skip = table[:, 2 * d:].index_select(0, taps.flatten()).view(n, -1, 3).to(dtype)
        skip = (skip * tap_weight.unsqueeze(-1)).sum(1)
        return denormalise(rgb + skip)

    def bytes_per_query(self, device: torch.device) -> int:
        # per member: index, inputs, weight, the skip's tap index and weight, the look-ups' temporaries; the
        # gathered codes, phases, basis and MLP activations count only where a whole chunk is one decoder block
        whole = decoder_rows(device) is None
        d, widest = self.hidden_dim, max(self.options['hidden_list'])
        return 4 * (8 + 16 + 4 + 8 + 4 + 16 + whole * 4 * (2 * d + 3 + d // 2 + d + 3 * widest))

    def bytes_per_lr_pixel(self) -> int:
        return 4 * (self.encoder.peak_channels + 2 * (2 * self.hidden_dim + 3))
