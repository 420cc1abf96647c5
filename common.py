"""Helpers shared by train.py, test.py and inference.py."""
import random

import numpy as np
import torch


def pick_device(name: str = 'auto') -> torch.device:
    """'auto' picks CUDA when available, else the CPU; anything else is taken as a torch device name."""
    if name == 'auto':
        return torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    device = torch.device(name)
    if device.type == 'cuda' and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} asked for, but CUDA is not available here")
    return device


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
