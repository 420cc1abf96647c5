"""LIIF: an EDSR-baseline or RDN encoder and the local implicit image function decoder.

Chen, Liu, Wang, "Learning Continuous Image Representation with Local Implicit Image Function",
CVPR 2021. Parameter names follow the official release so its checkpoints load unchanged.

Conventions: `lr` is (B, 3, h, w) RGB in [0, 1]; `coord` and `cell` are (B, Q, 2), row axis first,
in the [-1, 1] square whose pixel centres are -1 + (2i + 1) / n. Outputs are RGB in [0, 1] units.
"""
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from imgproc import coord_cell


def conv3x3(cin: int, cout: int) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, padding=1)


class ResBlock(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.body = nn.Sequential(conv3x3(ch, ch), nn.ReLU(inplace=True), conv3x3(ch, ch))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class EDSR(nn.Module):
    """EDSR-baseline without the upsampler: head conv, residual blocks, a last conv, global skip."""

    def __init__(self, n_resblocks: int = 16, n_feats: int = 64):
        super().__init__()
        self.head = nn.Sequential(conv3x3(3, n_feats))
        self.body = nn.Sequential(*[ResBlock(n_feats) for _ in range(n_resblocks)], conv3x3(n_feats, n_feats))
        self.out_dim = n_feats
        self.receptive_radius = 2 * n_resblocks + 2  # 3x3 convs on the longest path

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.head(x)
        return x + self.body(x)


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
    """RDN without the upsampler, configuration B (16 blocks of 8 layers, growth 64), G0 = 64."""

    def __init__(self, g0: int = 64, n_blocks: int = 16, n_layers: int = 8, growth: int = 64):
        super().__init__()
        self.SFENet1 = conv3x3(3, g0)
        self.SFENet2 = conv3x3(g0, g0)
        self.RDBs = nn.ModuleList([RDB(g0, growth, n_layers) for _ in range(n_blocks)])
        self.GFF = nn.Sequential(nn.Conv2d(n_blocks * g0, g0, 1), conv3x3(g0, g0))
        self.out_dim = g0
        self.receptive_radius = 2 + n_blocks * n_layers + 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f1 = self.SFENet1(x)
        x = self.SFENet2(f1)
        outs = []
        for block in self.RDBs:
            x = block(x)
            outs.append(x)
        return f1 + self.GFF(torch.cat(outs, 1))


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


def pixel_centres(n: int, device=None) -> torch.Tensor:
    """Centres of n pixels on [-1, 1]: -1 + (2i + 1) / n, computed as the official make_coord does."""
    r = 1 / n
    return -1 + r + 2 * r * torch.arange(n, device=device).float()


def ensemble_lookups(coord: torch.Tensor, h: int, w: int, local_ensemble: bool):
    """Latent-code look-ups of each query: the feature pixel whose cell holds the (shifted) query.

    Returns, per ensemble member (4 with local ensemble, else 1): row and column indices (B, Q),
    and the relative coordinate (B, Q, 2) scaled to feature-pixel units.
    The index is the one `grid_sample(mode='nearest', align_corners=False)` picks, so ties break
    exactly as in the official code.
    """
    shifts = [(-1, -1), (-1, 1), (1, -1), (1, 1)] if local_ensemble else [(0, 0)]
    eps = 1e-6 if local_ensemble else 0
    rows, cols = pixel_centres(h, coord.device), pixel_centres(w, coord.device)
    out = []
    for vy, vx in shifts:
        shifted = coord.clone()
        shifted[..., 0] += vy / h + eps
        shifted[..., 1] += vx / w + eps
        shifted.clamp_(-1 + 1e-6, 1 - 1e-6)
        iy = torch.round(((shifted[..., 0] + 1) * h - 1) / 2).long().clamp_(0, h - 1)
        ix = torch.round(((shifted[..., 1] + 1) * w - 1) / 2).long().clamp_(0, w - 1)
        rel = torch.stack([(coord[..., 0] - rows[iy]) * h, (coord[..., 1] - cols[ix]) * w], -1)
        out.append((iy, ix, rel))
    return out


def ensemble_weights(rels: list[torch.Tensor]) -> list[torch.Tensor]:
    """Each prediction is weighted by the area of the sub-rectangle diagonally opposite it."""
    areas = [torch.abs(rel[..., 0] * rel[..., 1]) + 1e-9 for rel in rels]
    total = torch.stack(areas).sum(0)
    return [a / total for a in reversed(areas)]


class LIIF(nn.Module):
    def __init__(self, encoder: nn.Module, encoder_name: str, hidden_list: list[int] = (256, 256, 256, 256),
                 feat_unfold: bool = True, local_ensemble: bool = True, cell_decode: bool = True,
                 fast: bool = True):
        super().__init__()
        self.encoder = encoder
        self.feat_unfold, self.local_ensemble, self.cell_decode = feat_unfold, local_ensemble, cell_decode
        self.fast = fast  # folded first layer + batched ensemble; False runs the official algorithm
        self.options = dict(encoder=encoder_name, hidden_list=list(hidden_list), feat_unfold=feat_unfold,
                            local_ensemble=local_ensemble, cell_decode=cell_decode)
        self.feat_dim = encoder.out_dim * (9 if feat_unfold else 1)
        self.imnet = MLP(self.feat_dim + 2 + (2 if cell_decode else 0), 3, list(hidden_list))

    def gen_feat(self, lr: torch.Tensor) -> torch.Tensor:
        """Encode once per image. The fast path also applies the feature part of the first decoder
        layer here: a linear map of the 3x3-unfolded feature is a 3x3 convolution of the feature."""
        feat = self.encoder((lr - 0.5) / 0.5)
        if not self.fast:
            return feat
        first = self.imnet.layers[0]
        k = 3 if self.feat_unfold else 1
        weight = first.weight[:, :self.feat_dim].reshape(-1, self.encoder.out_dim, k, k)
        return F.conv2d(feat, weight, first.bias, padding=k // 2)

    def query_rgb(self, feat: torch.Tensor, coord: torch.Tensor, cell: torch.Tensor) -> torch.Tensor:
        """RGB in [0, 1] units (unclamped) at `coord` from a `gen_feat` output."""
        h, w = feat.shape[-2:]
        lookups = ensemble_lookups(coord, h, w, self.local_ensemble)
        rel_cell = cell * cell.new_tensor([h, w])
        query = self._query_fast if self.fast else self._query_reference
        preds = query(feat, lookups, rel_cell)
        weights = ensemble_weights([rel for _, _, rel in lookups])
        out = sum(pred * wt.unsqueeze(-1) for pred, wt in zip(preds, weights))
        return out * 0.5 + 0.5

    def _query_reference(self, feat, lookups, rel_cell):
        """The official algorithm: unfold, then one full-MLP pass per ensemble member."""
        b, c, h, w = feat.shape
        if self.feat_unfold:
            feat = F.unfold(feat, 3, padding=1).view(b, c * 9, h, w)
        flat = feat.flatten(2)
        preds = []
        for iy, ix, rel in lookups:
            idx = (iy * w + ix).unsqueeze(1).expand(-1, flat.shape[1], -1)
            q_feat = flat.gather(2, idx).transpose(1, 2)
            inp = torch.cat([q_feat, rel] + ([rel_cell] if self.cell_decode else []), -1)
            preds.append(self.imnet(inp))
        return preds

    def _query_fast(self, latent, lookups, rel_cell):
        """All ensemble members in one decoder call; the first layer's feature term is precomputed."""
        b, c, h, w = latent.shape
        first, rest = self.imnet.layers[0], self.imnet.layers[1:]
        table = latent.permute(0, 2, 3, 1).reshape(b * h * w, c)
        offset = (torch.arange(b, device=latent.device) * (h * w)).unsqueeze(1)
        idx = torch.stack([iy * w + ix + offset for iy, ix, _ in lookups])  # (M, B, Q)
        rel = torch.stack([r for _, _, r in lookups])  # (M, B, Q, 2)
        x = table.index_select(0, idx.flatten()).view(*idx.shape, c)
        x = x + rel @ first.weight[:, self.feat_dim:self.feat_dim + 2].T
        if self.cell_decode:
            x = x + rel_cell @ first.weight[:, self.feat_dim + 2:].T
        return rest(x).unbind(0)

    def forward(self, lr: torch.Tensor, coord: torch.Tensor, cell: torch.Tensor) -> torch.Tensor:
        return self.query_rgb(self.gen_feat(lr), coord, cell)

    @torch.no_grad()
    def predict(self, lr: torch.Tensor, coord: torch.Tensor, cell: torch.Tensor, chunk: int = 30000) -> torch.Tensor:
        """Encode once, then decode the queries `chunk` at a time so memory stays bounded."""
        feat = self.gen_feat(lr)
        return torch.cat([self.query_rgb(feat, coord[:, i:i + chunk], cell[:, i:i + chunk])
                          for i in range(0, coord.shape[1], chunk)], 1)

    @torch.no_grad()
    def render(self, lr: torch.Tensor, size: tuple[int, int], chunk: int = 30000) -> torch.Tensor:
        """The (B, 3, H, W) image of `size` = (H, W) in [0, 1] units (unclamped) from lr (B, 3, h, w)."""
        coord, cell = coord_cell(*size)
        b = lr.shape[0]
        coord, cell = coord.to(lr.device).expand(b, -1, -1), cell.to(lr.device).expand(b, -1, -1)
        return self.predict(lr, coord, cell, chunk).view(b, *size, 3).permute(0, 3, 1, 2)


ENCODERS = {'edsr-baseline': EDSR, 'rdn': RDN}


def build_model(encoder: str = 'edsr-baseline', **options) -> LIIF:
    if encoder not in ENCODERS:
        raise ValueError(f"unknown encoder {encoder!r}; choose one of {sorted(ENCODERS)}")
    return LIIF(ENCODERS[encoder](), encoder, **options)


def liif_edsr(**options) -> LIIF:
    """EDSR-baseline-LIIF. Options: hidden_list, feat_unfold, local_ensemble, cell_decode, fast."""
    return build_model('edsr-baseline', **options)


def liif_rdn(**options) -> LIIF:
    """RDN-LIIF. Options as liif_edsr."""
    return build_model('rdn', **options)


def official_options(model_spec: dict) -> dict:
    """The model options an official checkpoint's {'name', 'args'} spec describes."""
    args = model_spec.get('args', {})
    return dict(encoder=args['encoder_spec']['name'],
                hidden_list=list(args['imnet_spec']['args']['hidden_list']),
                feat_unfold=args.get('feat_unfold', True), local_ensemble=args.get('local_ensemble', True),
                cell_decode=args.get('cell_decode', True))


def read_checkpoint(path: str | Path) -> tuple[dict, dict]:
    """(options, state dict) from an official LIIF checkpoint or one of ours, with clear errors."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location='cpu', weights_only=True)
    except Exception as e:
        raise ValueError(f"{path} is not a readable PyTorch checkpoint (truncated or another format?): {e}") from None
    if isinstance(ckpt, dict) and isinstance(ckpt.get('model'), dict) and 'sd' in ckpt['model']:
        if ckpt['model'].get('name') != 'liif':
            raise ValueError(f"{path} holds a {ckpt['model'].get('name')!r} model, not LIIF")
        state = {k: v for k, v in ckpt['model']['sd'].items() if not k.startswith(('encoder.sub_mean', 'encoder.add_mean'))}
        return official_options(ckpt['model']), state
    if isinstance(ckpt, dict) and isinstance(ckpt.get('options'), dict) and isinstance(ckpt.get('model'), dict):
        return ckpt['options'], ckpt['model']
    raise ValueError(f"{path} is not a LIIF checkpoint (neither the official format nor this project's)")


def load_weights(model: LIIF, path: str | Path) -> LIIF:
    """Load an official or project checkpoint into `model`; refuse anything that does not fit exactly."""
    options, state = read_checkpoint(path)
    differ = [f"{k}: file {options.get(k)!r}, model {v!r}" for k, v in model.options.items() if options.get(k) != v]
    if differ:
        raise ValueError(f"{path} does not fit the model: " + "; ".join(differ))
    own = model.state_dict()
    missing, unexpected = sorted(own.keys() - state.keys()), sorted(state.keys() - own.keys())
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in own.keys() & state.keys()
              if state[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        raise ValueError(f"{path} does not fit the model: missing {missing[:5]}, unexpected {unexpected[:5]}, "
                         f"shape mismatches {shapes[:5]}")
    model.load_state_dict(state)
    return model


def model_from_checkpoint(path: str | Path, **overrides) -> LIIF:
    """Build the model a checkpoint describes and load it (overrides: e.g. fast=False)."""
    options, _ = read_checkpoint(path)
    return load_weights(build_model(**options, **overrides), path)
