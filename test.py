"""Evaluate a LIIF checkpoint on benchmark sets: PSNR (official LIIF protocol) and SSIM per image and averaged;
or on paired LR / HR folders, such as celebA-HQ's validation pairs with the paper's protocol (RGB PSNR over
every pixel of the whole ground truth, averaged per image).

    python test.py                                   # config.weights on Set5 and Set14 at x2, x3, x4, x6, x8
    python test.py --test_sets=Set5 --test_scales=[4,2.5] --weights=path/to/ckpt.pth --save_images=True
    python test.py --experiment=celebAHQ-32-256-liif --weights=results/celebAHQ-32-256-liif/best.pth
    python test.py --test_lr_dir=val/32 --test_dir=val/256 --test_protocol=rgb --weights=path/to/ckpt.pth

Writes to out_dir: test_results.csv / .md (dataset x scale), test_per_image.csv, test_config.json and,
with save_images, images/<set>/x<scale>/<name>.png.
"""
import csv
import sys
import time
from pathlib import Path

import config
from common import (check_writable, checkpoint_model, evaluate, format_scale, pick_device, resolve_weights, run_main,
                    set_threads)
from dataset import BenchmarkDataset, PairedTestSet
from imgproc import replacing, tensor_to_image, write_image
from precision import check_amp, use_tf32


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
    parent, e.g. 'val/256'), or every benchmark set of test_sets at every scale of test_scales."""
    if cfg.test_dir:
        pairs = PairedTestSet(cfg.test_lr_dir, cfg.test_dir)
        return {('/'.join(Path(cfg.test_dir).resolve().parts[-2:]), float(pairs.scale)): pairs}
    return {(set_name, scale): BenchmarkDataset(Path(cfg.test_root) / set_name, scale)
            for set_name in cfg.test_sets for scale in cfg.test_scales}


def main(argv: list[str]) -> list[dict]:
    """Run the evaluation; returns the summary rows {'dataset', 'scale', 'psnr', 'ssim', 'images'}.
    Every input (settings, checkpoint, data) is checked before anything is written."""
    cfg = config.parse(argv, 'test')
    config.check(cfg, 'test')
    set_threads(cfg.threads)
    device = pick_device(cfg.device)
    model = checkpoint_model(cfg, argv, resolve_weights(cfg.weights)).to(device)
    check_amp(device, cfg.amp)
    use_tf32(cfg.tf32)
    datasets = datasets_to_score(cfg)
    out_dir = Path(cfg.out_dir)
    check_writable(out_dir, 'out_dir')
    out_dir.mkdir(parents=True, exist_ok=True)
    config.save(cfg, out_dir / 'test_config.json')
    print(f"evaluating {cfg.weights} on {device} ({cfg.amp})")

    start = time.perf_counter()
    per_image, summary = [], []
    for (set_name, scale), dataset in datasets.items():
        label = f'x{format_scale(scale)}'
        saver = image_saver(out_dir / 'images' / set_name / label) if cfg.save_images else None
        benchmark = cfg.test_protocol == 'benchmark'  # 'rgb': RGB PSNR over every pixel, no SSIM
        rows = evaluate(model, dataset, chunk=cfg.chunk, amp=cfg.amp, protocol=cfg.test_protocol,
                        with_ssim=benchmark, border=benchmark, on_image=saver, desc=f'{set_name} {label}')
        per_image += [{'dataset': set_name, **row} for row in rows]
        mean = {k: sum(row[k] for row in rows) / len(rows) for k in ('psnr', 'ssim') if k in rows[0]}
        summary.append({'dataset': set_name, 'scale': float(scale), **mean, 'images': len(rows)})
        ssim = f", SSIM {mean['ssim']:.4f}" if 'ssim' in mean else ''
        print(f"{set_name} {label}: PSNR {mean['psnr']:.4f} dB{ssim} ({len(rows)} images)")
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
