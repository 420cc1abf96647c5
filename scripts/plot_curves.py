"""Training curves of a train.py run as a PNG: loss and learning rate, validation PSNR, against steps.

    python scripts/plot_curves.py results/edsr-baseline-liif-short figure/training_curves.png

Reads the run's TensorBoard events (out_dir/tensorboard). Needs matplotlib (not a project requirement).
"""
import sys
from pathlib import Path

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator


def curves(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """{'train/loss', 'train/lr', 'valid/psnr'}: (step, value) pairs from every events file of the run."""
    series = {'train/loss': [], 'train/lr': [], 'valid/psnr': []}
    for events in sorted((run_dir / 'tensorboard').glob('events.out.tfevents.*')):
        acc = EventAccumulator(str(events), size_guidance={'scalars': 0}).Reload()
        for tag in series:
            if tag in acc.Tags()['scalars']:
                series[tag] += [(e.step, e.value) for e in acc.Scalars(tag)]
    return {tag: sorted(points) for tag, points in series.items()}


def plot(run_dir: Path, png: Path) -> None:
    series = curves(run_dir)
    if not series['train/loss']:
        raise ValueError(f"{run_dir / 'tensorboard'} holds no training loss")
    fig, (ax_loss, ax_psnr) = plt.subplots(1, 2, figsize=(10, 3.6))
    ax_loss.plot(*zip(*series['train/loss']), label='L1 loss (normalised values)')
    ax_loss.set_xlabel('optimiser step')
    ax_loss.set_ylabel('train loss')
    if series['train/lr']:
        ax_lr = ax_loss.twinx()
        ax_lr.plot(*zip(*series['train/lr']), color='gray', linestyle='--', label='learning rate')
        ax_lr.set_ylabel('learning rate')
    if series['valid/psnr']:
        ax_psnr.plot(*zip(*series['valid/psnr']), marker='o')
    ax_psnr.set_xlabel('optimiser step')
    ax_psnr.set_ylabel('validation PSNR (dB)')
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=120)


if __name__ == '__main__':
    if len(sys.argv) != 3:
        print("usage: python scripts/plot_curves.py RUN_DIR OUT.png", file=sys.stderr)
        sys.exit(2)
    try:
        plot(Path(sys.argv[1]), Path(sys.argv[2]))
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
