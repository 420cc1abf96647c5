"""The CUDA paths: fast vs reference, bf16 / fp16 renders, channels_last, compile_decoder (with and without
CUDA graphs), the device's own render sizing, training patches made on the device, the compiled training
step (CUDA graphs), training steps per dtype, an exact resume and a one-process nccl run of train.py.

Skipped where CUDA is absent (CI). `LIIF_TEST_DEVICE=cpu` runs the same checks on the CPU, to prove the
test logic without a GPU: fp16 and CUDA graphs are skipped there, the one-process run uses gloo, and the
Set5 renders use centre crops (full images on CUDA). TF32 is off, so fp32 means fp32.
"""
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import precision
import render
import train
from checkpoint import model_from_checkpoint
from dataset import BenchmarkDataset, DevicePatches, TrainDataset
from helpers import assert_same_tensors, liif_edsr, load, on_path, tiny, tiny_liif
from image_quality_assessment import evaluate
from train import train_step

ROOT = Path(__file__).resolve().parents[1]
DEVICE = os.environ.get('LIIF_TEST_DEVICE') or ('cuda' if torch.cuda.is_available() else '')
pytestmark = pytest.mark.skipif(not DEVICE, reason="needs CUDA (LIIF_TEST_DEVICE=cpu runs these on the CPU)")
os.environ.setdefault('CUBLAS_WORKSPACE_CONFIG', ':4096:8')  # deterministic cuBLAS for the resume test
CPU_CROP = 40  # LR side of the Set5 centre crops rendered on the CPU
# fp32 paths that sum in another order (folded vs unfolded first layer, other conv algorithms, fused
# kernels) differ by a few float32 ulps of values ~1 after ~40 layers: 1e-5 is ~80 ulps at 1.0
FP32_ATOL = 1e-5


@pytest.fixture(scope='module')
def device() -> torch.device:
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    return torch.device(DEVICE)


def need_cuda(device: torch.device, what: str) -> None:
    if device.type != 'cuda':
        pytest.skip(f"{what} needs CUDA")


@pytest.fixture(scope='module')
def model(device, official_weights):
    return model_from_checkpoint(official_weights).to(device).eval()


@pytest.fixture(scope='module')
def set5_x4(device, benchmark_root) -> list[dict]:
    """Set5 at x4 from the released LR files; centre crops (LR CPU_CROP px) on the CPU."""
    items = [item for item in BenchmarkDataset(benchmark_root / 'Set5', 4)]
    if device.type == 'cuda':
        return items
    crops = []
    for item in items:
        h, w = item['lr'].shape[-2:]
        top, left = (h - CPU_CROP) // 2, (w - CPU_CROP) // 2
        crops.append({**item, 'lr': item['lr'][:, top:top + CPU_CROP, left:left + CPU_CROP],
                      'hr': item['hr'][:, 4 * top:4 * (top + CPU_CROP), 4 * left:4 * (left + CPU_CROP)]})
    return crops


def lr_image(set5_x4, device) -> torch.Tensor:
    """The first Set5 LR image (or crop), (1, 3, h, w) on the device."""
    return set5_x4[0]['lr'].unsqueeze(0).to(device)


def test_fast_equals_reference_in_fp32(model, set5_x4, device):
    lr = lr_image(set5_x4, device)[..., :48, :48]
    gen = torch.Generator().manual_seed(0)
    coord = (torch.rand(2, 3000, 2, generator=gen) * 2 - 1).to(device)  # anywhere, borders included
    cell = torch.full_like(coord, 2 / (48 * 3.7))
    lr = lr.expand(2, -1, -1, -1)
    with torch.no_grad():
        reference = on_path(model, False)(lr, coord, cell)
        fast = on_path(model, True)(lr, coord, cell)
    assert (fast - reference).abs().max().item() <= FP32_ATOL


@pytest.mark.parametrize('amp', ['bf16', 'fp16'])
def test_half_precision_renders_keep_set5_x4_psnr(model, set5_x4, device, amp):
    if amp == 'fp16':
        need_cuda(device, 'fp16 autocast')
    scores = {}
    for name in ('fp32', amp):
        rows = evaluate(model, set5_x4, amp=name, with_ssim=False)
        scores[name] = sum(r['psnr'] for r in rows) / len(rows)
    assert scores['fp32'] > 25  # a real super-resolution, not two equally broken renders
    assert abs(scores[amp] - scores['fp32']) <= 0.01, scores


def test_channels_last_equals_default_layout(model, set5_x4, device):
    lr = lr_image(set5_x4, device)
    size = (lr.shape[-2] * 3, lr.shape[-1] * 3)
    default = model.render(lr, size)
    model.encoder.to(memory_format=torch.channels_last)
    try:
        channels_last = model.render(lr.contiguous(memory_format=torch.channels_last), size)
    finally:
        model.encoder.to(memory_format=torch.contiguous_format)
    assert (channels_last - default).abs().max().item() <= FP32_ATOL


@pytest.mark.parametrize('cuda_graphs', [False, True])
def test_compiled_decoder_equals_eager(official_weights, set5_x4, device, cuda_graphs):
    if cuda_graphs:
        need_cuda(device, 'CUDA graphs')
    model = model_from_checkpoint(official_weights).to(device).eval()  # its own: compiling replaces a method
    lr = lr_image(set5_x4, device)[..., :32, :40]
    size = (32 * 4 + 3, 40 * 4 + 1)  # not a multiple of the block: the padded last block is checked too
    eager = model.render(lr, size)
    model.compile_decoder(cuda_graphs=cuda_graphs)
    for _ in range(2):  # the second call replays what the first one captured
        compiled = model.render(lr, size)
        assert (compiled - eager).abs().max().item() <= FP32_ATOL


def test_device_sized_render_equals_small_chunks(model, set5_x4, device):
    """The device's own sizing (on CUDA: half the free memory, a whole chunk per decoder call) renders
    what small chunks in cache-sized blocks render."""
    lr = lr_image(set5_x4, device)
    size = (lr.shape[-2] * 3 + 1, lr.shape[-1] * 3 - 1)
    if device.type == 'cuda':
        free = torch.cuda.mem_get_info(device)[0]
        assert 0.45 * free <= render.device_budget(device) <= 0.55 * free  # half, whatever else runs meanwhile
        assert render.decoder_rows(device) is None
    assert (model.render(lr, size) - model.render(lr, size, chunk=1000)).abs().max().item() <= FP32_ATOL


def test_device_patches_equal_the_loaders_items(train_root, device):
    """Training patches made on the device (integer Pillow arithmetic) equal the DataLoader's, bit for bit."""
    dataset = TrainDataset([train_root / 'T91', train_root / 'BSDS200'], patch_size=24, sample_q=300, repeat=2)
    dataset.set_epoch(3)
    patches = DevicePatches(dataset, device)
    for start in (0, 16):
        indices = range(start, start + 16)
        expected = torch.utils.data.default_collate([dataset[i] for i in indices])
        made = patches(torch.utils.data.default_collate([dataset.device_draw(i) for i in indices]))
        assert all(torch.equal(made[k].cpu(), expected[k]) for k in expected)


def test_compiled_step_with_cuda_graphs_equals_the_eager_step(data, device, monkeypatch):
    """compile=True on one GPU (CUDA graphs) takes the eager fp32 steps, within float32 rounding (the
    bound of tests/test_train.py's CPU test: losses rtol 1e-5, weights 1e-3 lr per step)."""
    need_cuda(device, 'CUDA graphs')
    steps, lr_ = 5, 1e-3
    cfg = train.settings.parse(tiny(data, data, f'--lr={lr_}', '--hidden_list=[16]', '--device=cuda'))
    monkeypatch.setattr(train, 'make_model', lambda cfg: tiny_liif())  # few kernels to compile
    patches = TrainDataset(data / 'train', 16, sample_q=64, first_k=4)
    batch = torch.utils.data.default_collate([patches[i] for i in range(4)])
    lr, coord, cell, gt = (batch[k].to(device) for k in ('lr', 'coord', 'cell', 'gt'))
    results = []
    for compiled in (False, True):
        cfg.compile = compiled
        run = train.build_run(cfg, device, 1, 1)
        train.wrap(run)
        autocast = precision.autocast(device, 'fp32')
        losses = [train_step(run.net, run.optimizer, run.scaler, autocast, lr, coord, cell, gt).item()
                  for _ in range(steps)]
        results.append((losses, run.model.state_dict()))
    (eager, eager_weights), (compiled, compiled_weights) = results
    assert compiled == pytest.approx(eager, rel=1e-5) and eager[-1] < eager[0]
    assert_same_tensors(compiled_weights, eager_weights, atol=1e-3 * lr_ * steps)


def train_losses(amp: str, batch: dict, device: torch.device, steps: int) -> list[float]:
    """`steps` Adam steps of a seeded EDSR-baseline-LIIF on one fixed batch, as train.py takes them."""
    torch.manual_seed(0)
    model = liif_edsr().to(device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4, fused=True)
    scaler = torch.amp.GradScaler(device.type, enabled=amp == 'fp16')
    tensors = [batch[k].to(device) for k in ('lr', 'coord', 'cell', 'gt')]
    autocast = precision.autocast(device, amp)
    return [train_step(train.Objective(model), optimizer, scaler, autocast, *tensors).item() for _ in range(steps)]


@pytest.fixture(scope='module')
def train_batch(train_root) -> dict:
    patches = TrainDataset(train_root / 'BSDS200', patch_size=24, sample_q=256, first_k=4)
    return torch.utils.data.default_collate([patches[i] for i in range(4)])


@pytest.fixture(scope='module')
def fp32_losses(train_batch, device) -> list[float]:
    return train_losses('fp32', train_batch, device, 10)


@pytest.mark.parametrize('amp', ['fp32', 'bf16', 'fp16'])
def test_training_steps_per_dtype(amp, train_batch, device, fp32_losses):
    """Fitting one fixed batch: the loss is finite and falls. The first loss (the same weights) matches
    fp32 within the format's precision: bf16 keeps 8 significant bits (relative rounding 2^-9), fp16 11
    (2^-12); the mean absolute error over 3072 values of ~40 layers' rounding stays within 2^-6 / 2^-9."""
    if amp == 'fp16':
        need_cuda(device, 'fp16 training with a GradScaler')
    losses = fp32_losses if amp == 'fp32' else train_losses(amp, train_batch, device, 10)
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < 0.95 * losses[0], losses
    bound = {'fp32': 0, 'bf16': 2 ** -6, 'fp16': 2 ** -9}[amp]
    assert abs(losses[0] - fp32_losses[0]) <= bound * fp32_losses[0]


@pytest.fixture
def deterministic():
    torch.use_deterministic_algorithms(True, warn_only=True)
    yield
    torch.use_deterministic_algorithms(False)


def test_resume_equals_a_straight_run(data, tmp_path, device, deterministic):
    """train.py with max_steps: 3 steps, then resumed to 6, against 6 straight (deterministic kernels;
    exact on the CPU, within float32 noise of reordered sums on CUDA)."""
    atol = 0 if device.type == 'cpu' else 1e-6
    args = (f'--device={device.type}', '--epochs=1000')
    out = tmp_path / 'resumed'
    assert train.main(tiny(data, out, *args, '--max_steps=3'))['step'] == 3
    assert train.main(tiny(data, out, *args, '--max_steps=6', '--resume=auto'))['step'] == 6
    train.main(tiny(data, tmp_path / 'straight', *args, '--max_steps=6'))
    a, b = load(tmp_path / 'straight' / 'last.pth'), load(out / 'last.pth')
    assert_same_tensors(b['model'], a['model'], atol=atol)
    assert_same_tensors(b['optimizer'], a['optimizer'], atol=atol)
    assert (b['step'], b['epoch'], b['epoch_step']) == (a['step'], a['epoch'], a['epoch_step']) == (6, 1, 2)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def test_one_process_distributed_run(data, tmp_path, device):
    """train.py under torchrun's variables for one process: nccl on CUDA (gloo on the CPU), which shows
    as the process's own device cuda:0 in the report (a plain run says cuda)."""
    env = {**os.environ, 'RANK': '0', 'LOCAL_RANK': '0', 'WORLD_SIZE': '1', 'MASTER_ADDR': '127.0.0.1',
           'MASTER_PORT': str(free_port()), 'OMP_NUM_THREADS': '1'}
    out = tmp_path / 'ddp'
    proc = subprocess.run([sys.executable, str(ROOT / 'train.py'), *tiny(data, out, f'--device={device.type}',
                                                                         '--max_steps=2')],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    shown = 'cuda:0' if device.type == 'cuda' else 'cpu'
    assert f'training on {shown} x 1 process(es)' in proc.stdout
    ckpt = load(out / 'last.pth')
    assert ckpt['step'] == 2 and all(v.isfinite().all() for v in ckpt['model'].values())
