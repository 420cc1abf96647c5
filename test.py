"""Evaluate a LIIF checkpoint on benchmark sets: PSNR (official LIIF protocol) and SSIM per image and averaged;
or on paired LR / HR folders, such as celebA-HQ's validation pairs with the paper's protocol (RGB PSNR over
every pixel of the whole ground truth, averaged per image) or DIV2K's validation set with the official one
(RGB PSNR, scale + 6 pixels shaved: the paper's DIV2K table).

    python test.py                                   # config.weights on Set5 and Set14 at x2, x3, x4, x6, x8
    python test.py --test_sets=Set5 --test_scales=[4,2.5] --weights=path/to/ckpt.pth --save_images=True
    python test.py --experiment=celebAHQ-32-256-liif --weights=results/celebAHQ-32-256-liif/best.pth
    python test.py --test_lr_dir=val/32 --test_dir=val/256 --test_protocol=rgb --weights=path/to/ckpt.pth
    python test.py --degrade=jpeg40+noise10 --test_scales=[2,3,4]   # inputs through a named degradation
    python test.py --test_lr_dir=data/DIV2K/DIV2K_valid_LR_bicubic/X4 --test_dir=data/DIV2K/DIV2K_valid_HR --test_protocol=div2k

    torchrun --standalone --nproc_per_node=4 test.py --weights=path/to/ckpt.pth   # 4 GPUs (or CPU processes)

Writes to out_dir: test_results.csv / .md (dataset x scale), test_per_image.csv, test_config.json and,
with save_images, images/<set>/x<scale>/<name>.png. Under torchrun each process scores a share of the
images (balanced by pixels) and rank 0 writes the tables, the same to every digit as one process's.
"""
import csv
import sys
import time
from pathlib import Path

from torch.utils.data import Subset

import settings
from cli import checkpoint_model, format_scale, pick_device, run_main, set_threads
from dataset import BenchmarkDataset, DegradedInputs, PairedTestSet
from distributed import Team, join, shares
from files import check_writable, replacing
from image_quality_assessment import evaluate
from imgproc import image_size, tensor_to_image, write_image
from precision import check_amp, use_tf32
from weights import resolve_weights


def write_csv(path: Path, rows: list[dict]) -> None:
    with open(path, 'w', newline='') as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def scores(row: dict) -> str:
    """'PSNR / SSIM' of a result row, or 'PSNR' where SSIM is not part of the protocol."""
    return f"{row['psnr']:.4f} / {row['ssim']:.4f}" if 'ssim' in row else f"{row['psnr']:.4f}"


def markdown_table(summary: list[dict]) -> str:
    """Datasets as rows, scales as columns, 'PSNR / SSIM' (or 'PSNR') in each cell."""
    sets = list(dict.fromkeys(r['dataset'] for r in summary))
    scales = list(dict.fromkeys(r['scale'] for r in summary))
    cells = {(r['dataset'], r['scale']): scores(r) for r in summary}
    title = 'PSNR (dB) / SSIM' if 'ssim' in summary[0] else 'PSNR (dB)'
    lines = [f'| {title} | ' + ' | '.join(f'x{format_scale(s)}' for s in scales) + ' |',
             '|---' * (len(scales) + 1) + '|']
    lines += [f'| {name} | ' + ' | '.join(cells.get((name, s), '') for s in scales) + ' |' for name in sets]
    return '\n'.join(lines) + '\n'


def image_saver(folder: Path):
    folder.mkdir(parents=True, exist_ok=True)

    def save(item: dict, sr) -> None:
        write_image(folder / f"{item['name']}.png", tensor_to_image(sr[0]))
    return save


def datasets_to_score(cfg) -> dict[tuple[str, float], BenchmarkDataset | PairedTestSet]:
    """{(name, scale): dataset}: the pairs of test_lr_dir and test_dir (named by the HR folder and its
    parent, e.g. 'val/256'), or every benchmark set of test_sets at every scale of test_scales; their LR
    images degraded as `degrade` names (DegradedInputs) when it is set."""
    if cfg.test_dir:
        pairs = PairedTestSet(cfg.test_lr_dir, cfg.test_dir)
        sets = {('/'.join(Path(cfg.test_dir).resolve().parts[-2:]), float(pairs.scale)): pairs}
    else:
        sets = {(set_name, scale): BenchmarkDataset(Path(cfg.test_root) / set_name, scale)
                for set_name in cfg.test_sets for scale in cfg.test_scales}
    return {key: DegradedInputs(dataset, cfg.degrade) for key, dataset in sets.items()} if cfg.degrade else sets


def split_items(datasets: dict, world_size: int) -> list[list[tuple[int, int]]]:
    """(dataset number, image index) of every image, in world_size shares balanced by HR pixels."""
    sets = list(datasets.values())
    items = [(k, i) for k, dataset in enumerate(sets) for i in range(len(dataset))]
    costs = [h * w for h, w in (image_size(sets[k].hr_files[i]) for k, i in items)]
    return [[items[j] for j in share] for share in shares(costs, world_size)]


def counted(save, team: Team):
    """An on_image for evaluate that saves (when `save`), counts the image for the progress bar and
    stops this process when another one has failed."""
    def on_image(item: dict, sr) -> None:
        if save is not None:
            save(item, sr)
        team.finished_one()
        team.check()
    return on_image


def scored(model, datasets: dict, cfg, team: Team, out_dir: Path):
    """((set, scale), rows) of each dataset in order, rows as evaluate gives them: alone, each dataset as
    it is done; under torchrun, each process scores its share and rank 0 yields them all, in the
    single-process order, once every process is done (the others yield nothing)."""
    # SSIM belongs to the benchmark protocol; 'rgb' scores every pixel, 'div2k' shaves scale + 6
    scoring = dict(chunk=cfg.chunk, amp=cfg.amp, protocol=cfg.test_protocol,
                   with_ssim=cfg.test_protocol == 'benchmark', border=cfg.test_protocol != 'rgb')

    def saver(set_name: str, scale: float):
        return image_saver(out_dir / 'images' / set_name / f'x{format_scale(scale)}') if cfg.save_images else None
    if team.world_size == 1:
        for (set_name, scale), dataset in datasets.items():
            yield (set_name, scale), evaluate(model, dataset, on_image=saver(set_name, scale),
                                              desc=f'{set_name} x{format_scale(scale)}', **scoring)
        return
    split = team.decide(lambda: split_items(datasets, team.world_size))
    rows = []
    with team.progress(sum(map(len, split)), 'test'):
        for k, ((set_name, scale), dataset) in enumerate(datasets.items()):
            indices = [i for j, i in split[team.rank] if j == k]
            got = evaluate(model, Subset(dataset, indices), on_image=counted(saver(set_name, scale), team),
                           progress=False, **scoring)
            rows += [((k, i), row) for i, row in zip(indices, got)]
        gathered = team.gather(rows)
    if gathered is not None:
        by_item = dict(pair for share in gathered for pair in share)
        for k, (key, dataset) in enumerate(datasets.items()):
            yield key, [by_item[k, i] for i in range(len(dataset))]


def open_out_dir(cfg, out_dir: Path) -> None:
    check_writable(out_dir, 'out_dir')
    out_dir.mkdir(parents=True, exist_ok=True)
    settings.save(cfg, out_dir / 'test_config.json')


def main(argv: list[str]) -> list[dict]:
    """Run the evaluation; returns the summary rows {'dataset', 'scale', 'psnr', 'ssim', 'images'} (under
    torchrun, at rank 0; [] at the others). Every input (settings, checkpoint, data) is checked before
    anything is written."""
    cfg = settings.parse(argv, 'test')
    settings.check(cfg, 'test')
    set_threads(cfg.threads)
    team = join(pick_device(cfg.device), objects_only=True)
    device = team.device
    weights = team.first_on_node(lambda: resolve_weights(cfg.weights))  # fetched once per node when missing
    model = checkpoint_model(cfg, argv, weights, device)
    check_amp(device, cfg.amp)
    use_tf32(cfg.tf32)
    datasets = datasets_to_score(cfg)
    out_dir = Path(cfg.out_dir)
    team.decide(lambda: open_out_dir(cfg, out_dir))  # rank 0; the others wait for it
    if team.rank == 0:
        processes = f" x {team.world_size} processes" if team.world_size > 1 else ''
        degraded = f", inputs degraded by {cfg.degrade}" if cfg.degrade else ''
        print(f"evaluating {cfg.weights} on {device}{processes} ({cfg.amp}{degraded})")

    start = time.perf_counter()
    per_image, summary = [], []
    for (set_name, scale), rows in scored(model, datasets, cfg, team, out_dir):
        per_image += [{'dataset': set_name, **row} for row in rows]
        mean = {k: sum(row[k] for row in rows) / len(rows) for k in ('psnr', 'ssim') if k in rows[0]}
        summary.append({'dataset': set_name, 'scale': float(scale), **mean, 'images': len(rows)})
        ssim = f", SSIM {mean['ssim']:.4f}" if 'ssim' in mean else ''
        print(f"{set_name} x{format_scale(scale)}: PSNR {mean['psnr']:.4f} dB{ssim} ({len(rows)} images)")
    if team.rank != 0:
        return []
    elapsed = time.perf_counter() - start

    table = markdown_table(summary)
    # the three tables replace the previous ones together, once all are written (none on a full disk)
    with replacing(out_dir / 'test_results.csv') as results:
        write_csv(results, summary)
        with replacing(out_dir / 'test_per_image.csv') as rows:
            write_csv(rows, per_image)
            with replacing(out_dir / 'test_results.md') as markdown:
                markdown.write_text(table)
    print('\n' + table)
    print(f"{len(per_image)} images in {elapsed:.1f} s; results in {out_dir}")
    return summary


if __name__ == '__main__':
    sys.exit(run_main(main, sys.argv[1:]))
