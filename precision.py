"""CPU and GPU precision policy: the amp settings ('fp32', 'bf16', 'fp16'), their autocast contexts,
whether this CPU runs bf16 matrix products natively (AVX-512-bf16 or AMX) or only emulates them, and the
kernel a decoder's linear layer runs on (one probe of oneDNN's fused linear per dtype)."""
import functools
import os
import platform
import sys
from contextlib import nullcontext

import torch

AMP_DTYPES = {'fp32': None, 'bf16': torch.bfloat16, 'fp16': torch.float16}

# oneDNN ISA levels (ONEDNN_MAX_CPU_ISA) that include native bf16 instructions (AVX-512-bf16, AMX)
BF16_ISAS = {'AVX512_CORE_BF16', 'AVX512_CORE_FP16', 'AVX512_CORE_AMX', 'AVX512_CORE_AMX_FP16',
             'AVX10_1_512', 'AVX10_1_512_AMX', 'AVX10_1_512_AMX_FP16', 'ALL', 'DEFAULT'}


def cpu_flags(cpuinfo: str = '/proc/cpuinfo') -> set[str]:
    """The x86 feature flags of this CPU from /proc/cpuinfo (an empty set elsewhere)."""
    try:
        with open(cpuinfo) as f:
            return next((set(line.split(':', 1)[1].split()) for line in f if line.startswith('flags')), set())
    except OSError:
        return set()


def cpu_model(cpuinfo: str = '/proc/cpuinfo') -> str:
    """The CPU's model name from /proc/cpuinfo (platform.processor() elsewhere)."""
    try:
        with open(cpuinfo) as f:
            return next((line.split(':', 1)[1].strip() for line in f if line.startswith('model name')),
                        platform.processor() or 'CPU')
    except OSError:
        return platform.processor() or 'CPU'


def machine_name(device: torch.device) -> str:
    """The device as timings name it: the GPU's name, or the CPU model, threads and bf16-related flags."""
    if device.type == 'cuda':
        return torch.cuda.get_device_name(device)
    flags = ', '.join(f for f in ('avx2', 'avx512f', 'avx512_bf16', 'amx_bf16') if f in cpu_flags())
    return f"{cpu_model()}, {torch.get_num_threads()} threads" + (f" ({flags})" if flags else '')


@functools.cache
def onednn_linear(dtype: torch.dtype) -> bool:
    """Whether oneDNN's fused linear (matmul, bias and ReLU in one kernel) runs in `dtype` here: an x86 CPU
    and a oneDNN build whose op works (a 1x1 product: a build or ISA that cannot do it fails here, not
    mid-render). oneDNN picks its kernels by instruction set (AVX2, AVX-512, AMX), where MKL, behind addmm,
    picks them by CPU vendor too."""
    if platform.machine().lower() not in ('x86_64', 'amd64') or not torch.backends.mkldnn.is_available():
        return False
    try:
        x = torch.ones(1, 1, dtype=dtype)
        torch.ops.mkldnn._linear_pointwise(x, x, x[0], 'relu', [], '')
    except (RuntimeError, AttributeError):
        return False
    return True


@functools.cache
def native_cpu_bf16() -> bool:
    """Whether bf16 matrix products run natively here: the CPU has AVX-512-bf16 or AMX-bf16, oneDNN
    is not limited below them (ONEDNN_MAX_CPU_ISA), and oneDNN's fused bf16 linear actually works."""
    if not {'avx512_bf16', 'amx_bf16'} & cpu_flags():
        return False
    limit = os.environ.get('ONEDNN_MAX_CPU_ISA', os.environ.get('DNNL_MAX_CPU_ISA', 'ALL')).upper()
    return limit in BF16_ISAS and onednn_linear(torch.bfloat16)


def native_bf16(device: torch.device) -> bool:
    """Whether bf16 pays on `device`: a CUDA GPU that supports it, or a CPU with native bf16."""
    return torch.cuda.is_bf16_supported() if device.type == 'cuda' else native_cpu_bf16()


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, relu: bool) -> torch.Tensor:
    """x @ weight.T + bias, then a ReLU when asked, by the fastest kernel at hand when autograd is off:
    cuBLASLt's fused bias + ReLU on CUDA; on x86 CPUs oneDNN's fused linear in fp32 (no bias copy and no
    ReLU pass: renders 1.08-1.46x faster than MKL's addmm + relu_ on an AVX2 EPYC) and in bf16 where it
    is native (AMX: half the time of addmm + relu_). addmm and an in-place ReLU otherwise, and while
    compiling (inductor fuses its own kernels and cannot lower oneDNN's op with weights as inputs)."""
    if not torch.is_grad_enabled() and not torch.compiler.is_compiling():
        if relu and x.is_cuda:
            return torch._addmm_activation(bias, x, weight.t())
        if x.device.type == 'cpu' and (x.dtype == torch.float32 and onednn_linear(torch.float32)
                                       or x.dtype == torch.bfloat16 and native_cpu_bf16()):
            return torch.ops.mkldnn._linear_pointwise(x, weight, bias, 'relu' if relu else 'none', [], '')
    x = torch.addmm(bias, x, weight.t())
    return x.relu_() if relu else x


@functools.cache
def warn_slow_bf16() -> None:
    """Once per process: bf16 on a CPU without native bf16 is emulated, slower than fp32."""
    print("warning: this CPU has no native bf16 (AVX-512-bf16 or AMX), so amp='bf16' runs emulated "
          "and slower than fp32; use --amp=fp32 here", file=sys.stderr)


@functools.cache
def point_to_bf16() -> None:
    """Once per process: fp32 on a CPU with native bf16, for a long job (a folder, a video)."""
    kind = 'AMX' if 'amx_bf16' in cpu_flags() else 'AVX-512-bf16'
    print(f"note: this CPU has native bf16 ({kind}): --amp=bf16 renders 1.7-3.4x faster than fp32 on such CPUs, "
          f"for about -0.005 dB PSNR (docs/training.md#bf16-on-the-cpu-only-with-native-bf16)", file=sys.stderr)


def suggest_amp(device: torch.device, amp: str) -> None:
    """Point a long job in fp32 on a CPU with native bf16 to --amp=bf16 (once)."""
    if device.type == 'cpu' and amp == 'fp32' and native_cpu_bf16():
        point_to_bf16()


def check_amp_name(amp: str) -> None:
    """Refuse an amp setting that is not one of AMP_DTYPES."""
    if amp not in AMP_DTYPES:
        raise ValueError(f"amp must be one of {list(AMP_DTYPES)}, got {amp!r}")


def check_amp(device: torch.device, amp: str) -> None:
    """Refuse an unknown amp or fp16 off CUDA; warn (once) when bf16 will be slow on this CPU."""
    check_amp_name(amp)
    if amp == 'fp16' and device.type != 'cuda':
        raise ValueError("amp='fp16' needs a CUDA device; use 'bf16' (on CPUs with native bf16) or 'fp32'")
    if amp == 'bf16' and device.type == 'cpu' and not native_cpu_bf16():
        warn_slow_bf16()


def use_tf32(allowed: bool) -> None:
    """fp32 on CUDA GPUs: TF32 tensor cores, or true fp32 (PyTorch lets cuDNN convolutions use TF32 by
    default, which moves the official scores in their last printed digit)."""
    torch.backends.cuda.matmul.allow_tf32 = allowed
    torch.backends.cudnn.allow_tf32 = allowed


def autocast(device: torch.device, amp: str):
    """The autocast context for amp ('fp32': none), after check_amp."""
    check_amp(device, amp)
    return torch.autocast(device.type, dtype=AMP_DTYPES[amp]) if AMP_DTYPES[amp] else nullcontext()
