"""Every setting of train.py, test.py and inference.py, as plain Python.

Edit the values here, or override any of them on the command line: `python test.py --test_scales=[4]
--chunk=60000`. `--experiment=NAME` applies one of EXPERIMENTS first; other overrides apply after it.
Defaults reproduce the official EDSR-baseline-LIIF DIV2K recipe. Each script reads some sections
(settings.SCRIPTS); `--help` lists them with the one-line comments written here. This file imports
nothing: the parser and the checks are in settings.py.
"""
# ---- experiment
experiment = 'edsr-baseline-liif'  # a name from EXPERIMENTS below
out_dir = ''  # where a run writes its files; '' = results/<experiment>
seed = 0  # seeds Python, NumPy and torch for reproducible runs
device = 'auto'  # 'auto' (CUDA when available), 'cpu', 'cuda' or 'cuda:N'
threads = 0  # CPU threads for torch (torch.set_num_threads); 0 = torch's default, one per core
tf32 = False  # CUDA: fp32 matmuls and convolutions on TF32 tensor cores (faster; PSNR moves in the 4th decimal)

# ---- model
model = 'liif'  # 'liif', 'metasr', 'upsample' (the encoder's own up-sampler, no decoder: the fixed-scale baselines) or any registered model (--help lists them)
encoder = 'edsr-baseline'  # 'edsr-baseline' or 'rdn'
upsample_scale = 2  # scale of the 'upsample' model's pixel-shuffle up-sampler (EDSR 2/3/4/8, RDN 2/3/4)
hidden_list = [256, 256, 256, 256]  # LIIF / LTE decoder MLP hidden sizes (MetaSR's is fixed: [256])
hidden_dim = 256  # LTE: amplitude and frequency channels (an even number: cos and sin of hidden_dim / 2 phases)
feat_unfold = True  # LIIF: feed the 3x3-unfolded feature to the decoder
local_ensemble = True  # LIIF: blend the 4 nearest latent codes by area
cell_decode = True  # LIIF: give the decoder the query's cell size
fast = True  # LIIF: folded first layer + batched ensemble (same function); False runs the official algorithm
compile_decoder = False  # LIIF fast path: torch.compile the decoder for rendering (CUDA graphs on CUDA); off until measured faster

# ---- data
train_data = 'downsampled'  # 'downsampled' (LR made at random scales), 'degraded' (the same, through the degradation section's real-world model), 'paired' (train_lr_dir + train_dir) or 'varied' (paired, sizes over [size_min, size_max])
train_dir = ['data/DIV2K/DIV2K_train_HR']  # folders of HR training images (all are used)
train_lr_dir = ['data/DIV2K/DIV2K_train_LR_bicubic/X2']  # 'paired' / 'varied': LR folders, one per train_dir folder, matched by sorted file order
valid_dir = 'data/DIV2K/DIV2K_valid_HR'  # HR images (patch PSNR as the official) or a benchmark set like Set5 (PSNR at valid_scale)
valid_lr_dir = ''  # LR folder paired with valid_dir: validate on paired patches (patch_size, sample_q) as the official; '' = not paired
valid_first = 10  # validate on the first N images of valid_dir (the official recipe uses 10)
valid_repeat = 160  # validation patches per image (the official: 10 images x 160 patches)
valid_scale = 4.0  # scale of the validation when valid_dir is a benchmark set (<set>/HR)
patch_size = 48  # LR patch side in pixels (0 = whole LR images, 'paired' data and paired validation only)
scale_min = 1.0  # training scales are drawn from U(scale_min, scale_max)
scale_max = 4.0  # upper end of the training scales
sample_q = 2304  # HR pixels sampled per training patch (0 = all of them, 'paired' / 'varied' data only)
size_min = 32  # 'varied': the ground truths' shorter sides rise evenly from size_min to size_max over the items
size_max = 256  # 'varied': the largest ground truth's shorter side
gt_resize = 0  # 'varied': resize each ground truth again to this shorter side (0 = off)
repeat = 20  # passes over the training images per epoch
in_memory = True  # decode the training images once and keep them as uint8 when they fit
node_cache = True  # torchrun + in_memory: decode them once per node into one read-only memory-mapped file that every process shares (False: a copy per process)
cache_dir = ''  # node_cache's folder, on a local disk with room for the decoded images ('' = <system temp folder>/liif-cache)
num_workers = 8  # DataLoader worker processes
device_data = False  # make the training patches on the device from the images held there ('downsampled' or 'degraded', in_memory); the workers only draw (and make the degraded LR)

# ---- degradation
# train_data='degraded': Real-ESRGAN's second-order model (blur, resize, noise, JPEG, twice; then the final
# resize with a sinc filter), its values from train_realesrgan_x4plus.yml; the final resize goes to the
# drawn scale. Names ending in 2 are the second order's. See degrade.py and docs/training.md.
kernel_range = [7, 21]  # blur kernels' odd sides, drawn uniformly from this range
kernel_list = ['iso', 'aniso', 'generalized_iso', 'generalized_aniso', 'plateau_iso', 'plateau_aniso']  # first blur: kernel shapes
kernel_prob = [0.45, 0.25, 0.12, 0.03, 0.12, 0.03]  # first blur: the shapes' probabilities (add up to 1)
sinc_prob = 0.1  # first blur: chance of a 2-D sinc kernel instead
blur_sigma = [0.2, 3.0]  # first blur: Gaussian sigma range, HR pixels
betag_range = [0.5, 4.0]  # first blur: generalized Gaussian shape beta
betap_range = [1.0, 2.0]  # first blur: plateau shape beta
resize_prob = [0.2, 0.7, 0.1]  # first resize: chances of up, down and keep
resize_range = [0.15, 1.5]  # first resize: factor range
gaussian_noise_prob = 0.5  # first noise: chance of Gaussian noise (else Poisson)
noise_range = [1.0, 30.0]  # first noise: Gaussian sigma, 8-bit levels
poisson_scale_range = [0.05, 3.0]  # first noise: Poisson noise scale
gray_noise_prob = 0.4  # first noise: chance of one gray noise map for all channels
jpeg_range = [30, 95]  # first JPEG: quality range
second_blur_prob = 0.8  # chance of the second blur
kernel_list2 = ['iso', 'aniso', 'generalized_iso', 'generalized_aniso', 'plateau_iso', 'plateau_aniso']  # second blur: kernel shapes
kernel_prob2 = [0.45, 0.25, 0.12, 0.03, 0.12, 0.03]  # second blur: the shapes' probabilities
sinc_prob2 = 0.1  # second blur: chance of a sinc kernel
blur_sigma2 = [0.2, 1.5]  # second blur: Gaussian sigma range
betag_range2 = [0.5, 4.0]  # second blur: generalized Gaussian beta
betap_range2 = [1.0, 2.0]  # second blur: plateau beta
resize_prob2 = [0.3, 0.4, 0.3]  # second resize: chances of up, down and keep (relative to the LR size)
resize_range2 = [0.3, 1.2]  # second resize: factor range
gaussian_noise_prob2 = 0.5  # second noise: chance of Gaussian noise
noise_range2 = [1.0, 25.0]  # second noise: Gaussian sigma, 8-bit levels
poisson_scale_range2 = [0.05, 2.5]  # second noise: Poisson noise scale
gray_noise_prob2 = 0.4  # second noise: chance of gray noise
jpeg_range2 = [30, 95]  # final JPEG: quality range
final_sinc_prob = 0.8  # chance of the sinc filter after the final resize
final_noise_prob = 0.0  # chance of noise (drawn as the second's) after everything, on top of the JPEG (not in Real-ESRGAN)

# ---- training
batch_size = 16  # patches per step (over all processes)
lr = 1e-4  # Adam learning rate
schedule = 'multistep'  # 'multistep' (the official: lr x gamma at each epoch in milestones) or 'cosine' (per step)
milestones = [200, 400, 600, 800]  # multistep: epochs at which the learning rate is multiplied by gamma
gamma = 0.5  # multistep: learning-rate factor at each milestone
warmup_steps = 0  # cosine: linear warm-up over this many optimiser steps, then cosine decay to 0 at the last step
epochs = 1000  # passes of `repeat` x the training images
valid_every = 1  # validate every N epochs
save_every = 100  # keep a numbered checkpoint every N epochs
ema_decay = 0.0  # EMA of the weights, ema = d*ema + (1-d)*w; 0 disables it
amp = 'fp32'  # 'fp32', 'bf16' or 'fp16' (CUDA) autocast, in training, testing and inference; bf16 pays on GPUs and on CPUs with native bf16 (AVX-512-bf16, AMX: renders 1.7-3.4x faster, under 0.01 dB lower PSNR), elsewhere it is emulated and slower
channels_last = False  # channels_last memory format for the encoder (CUDA)
compile = False  # torch.compile the training step (forward, loss, backward; CUDA graphs on one GPU)
resume = ''  # a run's checkpoint to continue ('' = start fresh; 'auto' = out_dir/last.pth if present)
init_weights = ''  # checkpoint (official or ours) to start from for fine-tuning (the default weights' path: fetched when missing)
max_steps = 0  # stop after this many optimiser steps in total (0 = run all epochs); for short runs

# ---- testing
weights = 'results/pretrained_models/edsr-baseline-liif.pth'  # checkpoint to evaluate or run
test_root = 'data/benchmark'  # folder holding <set>/HR and optional <set>/LR_bicubic/X<s>
test_sets = ['Set5', 'Set14']  # sub-folders of test_root to evaluate
test_scales = [2, 3, 4, 6, 8]  # any positive reals; LR files are used where they exist
chunk = 30000  # queries per decoder call; bounds memory at any scale (0 = sized from the device's memory)
save_images = False  # also write the SR images beside the results table
test_dir = ''  # HR folder of (LR, HR) pairs to score instead of test_sets, e.g. celebA-HQ val/256 ('' = benchmark sets)
test_lr_dir = ''  # LR folder paired with test_dir by sorted file order, images used whole (e.g. val/32)
degrade = ''  # score degraded inputs: a named, seeded degradation of every LR, e.g. 'jpeg40', 'noise10', 'jpeg40+noise10', 'blur1.5' (degrade.named_plan; '' = clean)
test_protocol = 'benchmark'  # 'benchmark' (PSNR of Y, border = scale, and SSIM), 'rgb' (PSNR in RGB, every pixel: celebA-HQ's) or 'div2k' (PSNR in RGB, border = scale + 6: DIV2K validation's)

# ---- inference
input = 'figure/example_lr.png'  # an image, a video (mp4, mkv, mov, webm, avi) or a folder of them
output = ''  # output file or folder; '' = results/inference/<input name>_x<scale>.png (a video: its own container)
scale = 4.0  # output / input size; ignored when size is set
scale_hw = []  # [height factor, width factor] for anisotropic output; overrides scale
size = []  # exact output [height, width]; overrides scale and scale_hw
window = []  # [top, left, height, width]: write only this part of the output ([] = all of it)
max_pixels = 200_000_000  # refuse outputs with more pixels than this
bits = 0  # output bit depth: 0 = the input's (8 or 16), or 8 or 16 (16 needs PNG or TIFF)
alpha = 'model'  # an input's alpha: 'model' (rendered like a gray image) or 'bicubic' (PIL bicubic)
quality = 95  # JPEG and WebP output quality, 1-100
strip_metadata = False  # write no EXIF (the ICC colour profile is kept)
format = ''  # a folder's outputs: 'png', 'jpg', 'webp', 'tif' or 'bmp' for all ('' = each input's own)
recursive = False  # a folder: its subfolders too, mirrored in the output folder
overwrite = False  # a folder input: write every output again (False: skip those already there, to finish an interrupted run)
codec = 'libx264'  # video output encoder: 'libx264', 'libx265', 'libvpx-vp9' or 'ffv1' (lossless)
crf = 18  # video quality, lower is better and bigger: x264/x265 0-51, VP9 0-63 (ffv1 ignores it)
preset = 'medium'  # x264/x265 speed preset, 'ultrafast' to 'veryslow' (slower: smaller files at the same crf)
pix_fmt = 'yuv420p'  # video pixel format; a source deeper than 8 bits gets its 10-bit form where the codec has one
frames = []  # video: [start, end) frame numbers to render, a preview ([] = every frame)

_DIV2K_X2 = {'train_data': 'paired', 'train_lr_dir': ['data/DIV2K/DIV2K_train_LR_bicubic/X2'],
             'valid_lr_dir': 'data/DIV2K/DIV2K_valid_LR_bicubic/X2', 'sample_q': 0}


def _celebahq(lr_size: int, hr_size: int) -> dict:
    """The official celebA-HQ recipe lr_size -> hr_size: LR images whole, ground truths of sizes spread over
    [lr_size, hr_size], 1024 queries; validation on the first 100 whole validation pairs; 200 epochs;
    testing on every validation pair, RGB PSNR over every pixel."""
    return {'train_data': 'varied', 'train_lr_dir': [f'data/celebAHQ/train/{lr_size}'],
            'train_dir': [f'data/celebAHQ/train/{hr_size}'], 'valid_lr_dir': f'data/celebAHQ/val/{lr_size}',
            'valid_dir': f'data/celebAHQ/val/{hr_size}', 'size_min': lr_size, 'size_max': hr_size,
            'patch_size': 0, 'sample_q': 1024, 'repeat': 1, 'valid_first': 100, 'valid_repeat': 1,
            'epochs': 200, 'milestones': [100], 'gamma': 0.1, 'test_lr_dir': f'data/celebAHQ/val/{lr_size}',
            'test_dir': f'data/celebAHQ/val/{hr_size}', 'test_protocol': 'rgb'}


EXPERIMENTS = {
    'edsr-baseline-liif': {},
    'rdn-liif': {'encoder': 'rdn'},
    'edsr-baseline-liif-c': {'cell_decode': False},
    'edsr-baseline-liif-u': {'feat_unfold': False},
    'edsr-baseline-liif-e': {'local_ensemble': False},
    'edsr-baseline-liif-d': {'hidden_list': [256, 256]},
    'edsr-baseline-liif-x2': {'scale_min': 2.0, 'scale_max': 2.0},
    'edsr-baseline-liif-x3': {'scale_min': 3.0, 'scale_max': 3.0},
    'edsr-baseline-liif-x4': {'scale_min': 4.0, 'scale_max': 4.0},
    'edsr-baseline-metasr': {'model': 'metasr'},
    # LTE (Lee and Jin, CVPR 2022): its official configs keep LIIF's recipe and use a [256, 256, 256] MLP
    'edsr-baseline-lte': {'model': 'lte', 'hidden_list': [256, 256, 256]},
    'rdn-lte': {'model': 'lte', 'encoder': 'rdn', 'hidden_list': [256, 256, 256]},
    'rdn-metasr': {'model': 'metasr', 'encoder': 'rdn'},
    # fixed-scale baselines on DIV2K's X2 LR files: 48-px LR patches, every HR pixel of the patch a query
    'edsr-baseline-x2': {'model': 'upsample', 'upsample_scale': 2, **_DIV2K_X2},
    'rdn-x2': {'model': 'upsample', 'upsample_scale': 2, 'encoder': 'rdn', **_DIV2K_X2},
    # celebA-HQ, ground truths of varying size (see data/README.md for the folders)
    'celebAHQ-32-256-liif': _celebahq(32, 256),
    'celebAHQ-32-256-upsample': {**_celebahq(32, 256), 'gt_resize': 256, 'model': 'upsample', 'upsample_scale': 8},
    'celebAHQ-64-128-liif': _celebahq(64, 128),
    'celebAHQ-64-128-upsample': {**_celebahq(64, 128), 'gt_resize': 128, 'model': 'upsample', 'upsample_scale': 2},
    # minutes on one GPU: batch 32 at twice the official lr (linear scaling), cosine to max_steps after a
    # 200-step warm-up (Adam's early steps at 2e-4 are unstable without it), bf16 autocast for speed
    # real photos: the official weights fine-tuned on patches through the degradation model with camera-like
    # ranges (milder than Real-ESRGAN's, noise also after the JPEG), L1, cosine (see docs/training.md)
    'edsr-baseline-liif-real': {'train_data': 'degraded', 'init_weights': 'results/pretrained_models/edsr-baseline-liif.pth',
                                'lr': 1e-4, 'schedule': 'cosine', 'warmup_steps': 100, 'max_steps': 800, 'amp': 'bf16',
                                'repeat': 5, 'save_every': 2, 'valid_dir': 'data/benchmark/Set5', 'valid_scale': 4.0,
                                'blur_sigma': [0.2, 1.5], 'resize_range': [0.5, 1.5], 'noise_range': [1.0, 15.0],
                                'poisson_scale_range': [0.05, 1.0], 'second_blur_prob': 0.5, 'resize_range2': [0.5, 1.2],
                                'noise_range2': [1.0, 15.0], 'poisson_scale_range2': [0.05, 1.0], 'final_noise_prob': 0.5},
    'edsr-baseline-liif-short': {'batch_size': 32, 'lr': 2e-4, 'schedule': 'cosine', 'warmup_steps': 200,
                                 'amp': 'bf16'},
}
