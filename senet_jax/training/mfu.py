"""Throughput per device and model FLOPs utilisation (MFU) for the trainer's logs.

Training FLOPs per image = 3 x the forward pass's FLOPs (the backward pass computes gradients
for both the inputs and the weights of every layer: about twice the forward), and forward
FLOPs = 2 x MACs as `senet_jax.models.counting` counts them (convolutions and dense layers, the
papers' convention). MFU = training FLOPs per image x images/s / (devices x peak FLOP/s of one
device). These are *model* FLOPs (PaLM, Chowdhery et al. 2022, appendix B): recomputation by
`config.remat` and a distillation teacher's forward pass are not counted, so both lower MFU.

The peak comes from `config.peak_flops_per_device` when > 0, else from the bf16 table below by
`jax.devices()[0].device_kind`; for any other device (CPU) it is unknown and no MFU is shown.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Callable, Sequence

# Dense bf16 peak per JAX device. On TPU v4 / v5p a device is one (megacore) chip; the TPU
# figures are per chip from the Cloud TPU system-architecture pages.
TPU_PEAKS = {  # device_kind -> FLOP/s
    'TPU v4': 275e12,        # cloud.google.com/tpu/docs/v4: 275 TFLOPS bf16 per chip
    'TPU v5 lite': 197e12,   # v5e, cloud.google.com/tpu/docs/v5e: 197 TFLOPS bf16 per chip
    'TPU v5e': 197e12,
    'TPU v5': 459e12,        # v5p, cloud.google.com/tpu/docs/v5p: 459 TFLOPS bf16 per chip
    'TPU v5p': 459e12,
    'TPU v6 lite': 918e12,   # v6e, cloud.google.com/tpu/docs/v6e: 918 TFLOPS bf16 per chip
    'TPU v6e': 918e12,
}
# NVIDIA datasheets quote bf16 Tensor Core throughput "with sparsity"; the dense peak is half.
# First match wins (device_kind e.g. 'NVIDIA H100 80GB HBM3', 'NVIDIA A100-SXM4-80GB').
GPU_PEAKS = (  # (substrings that must all occur, FLOP/s)
    (('H200', 'NVL'), 835e12),   # H200 NVL datasheet: 1,671 TFLOPS bf16 sparse
    (('H200',), 989e12),         # H200 SXM datasheet: 1,979 TFLOPS bf16 sparse
    (('H100', 'NVL'), 835e12),   # H100 NVL datasheet: 1,671 TFLOPS bf16 sparse
    (('H100', 'PCIe'), 756e12),  # H100 PCIe datasheet: 1,513 TFLOPS bf16 sparse
    (('H100',), 989e12),         # H100 SXM datasheet: 1,979 TFLOPS bf16 sparse
    (('A100',), 312e12),         # A100 datasheet: 312 TFLOPS bf16 dense (624 sparse)
)


def table_peak(device_kind: str) -> float | None:
  """The bf16 peak FLOP/s of one device of `device_kind` from the tables, or None."""
  if device_kind in TPU_PEAKS:
    return TPU_PEAKS[device_kind]
  for needles, peak in GPU_PEAKS:
    if all(n in device_kind for n in needles):
      return peak
  return None


def train_flops_per_image(model, resolution: int) -> float:
  """Training FLOPs of one image: 3 x 2 x the forward MACs (module docstring)."""
  from senet_jax.models import counting
  _, macs = counting.count(model, resolution)
  return 6.0 * macs


def mfu(flops_per_image: float, images_per_second: float, devices: int, peak: float) -> float:
  """Model FLOPs utilisation: achieved training FLOP/s over the devices' peak (0..1)."""
  return flops_per_image * images_per_second / (devices * peak)


@dataclasses.dataclass
class Throughput:
  """Turns images/s into per-device rates and MFU, at the training resolution of each step.

  `flops_per_image(resolution)`; `resolution_at(step)` gives the resolution of the step that
  brought the counter to `step` (progressive learning changes it by stage).
  """
  flops_per_image: Callable[[int], float]
  resolution_at: Callable[[int], int]
  devices: int
  peak: float | None
  device_kind: str
  peak_source: str = 'table'

  @classmethod
  def from_config(cls, model, config, devices: Sequence, stages=None) -> 'Throughput':
    """For the trainer: the model's FLOPs, the devices' peak (config override first)."""
    kind = devices[0].device_kind
    override = float(config.get('peak_flops_per_device', 0.0))
    peak, source = (override, 'config.peak_flops_per_device') if override > 0 else (
        table_peak(kind), 'table')
    if stages:
      from senet_jax.training import progressive
      resolution_at = lambda step: progressive.stage_at(stages, max(step - 1, 0)).image_size
    else:
      resolution_at = lambda step: config.image_size
    counted = functools.lru_cache(maxsize=None)(
        lambda res: train_flops_per_image(model, res))
    return cls(counted, resolution_at, len(devices), peak, kind, source)

  def metrics(self, step: int, images_per_second: float) -> dict[str, float]:
    """img/s per device, model TFLOP/s per device and (peak known) 'mfu' as a fraction."""
    flops = self.flops_per_image(self.resolution_at(step))
    out = {'images_per_second_per_device': images_per_second / self.devices,
           'model_tflops_per_second_per_device':
               flops * images_per_second / self.devices / 1e12}
    if self.peak:
      out['mfu'] = mfu(flops, images_per_second, self.devices, self.peak)
    return out

  def scalars(self, step: int, steps_per_second: float | None, batch_size: int) -> dict:
    """TensorBoard 'throughput/...' scalars of a window of steps (nothing if untimed)."""
    if not steps_per_second:
      return {}
    images = steps_per_second * batch_size
    out = {'images_per_second': images, 'step_time_ms': 1000.0 / steps_per_second,
           **self.metrics(step, images)}
    return {f'throughput/{k}': v for k, v in out.items()}

  def describe(self, step: int = 0) -> str:
    """One line: FLOPs per image and the peak MFU is measured against (or why there is none)."""
    res = self.resolution_at(step + 1)
    text = (f'training FLOPs per image: {self.flops_per_image(res) / 1e9:.3g} G at {res} px '
            f'(3 x 2 x MACs); {self.devices} x {self.device_kind}')
    if self.peak:
      return text + f': MFU against {self.peak / 1e12:g} TFLOP/s per device ({self.peak_source})'
    return text + (': peak FLOP/s unknown, no MFU shown (set config.peak_flops_per_device to '
                   'see it)')
