"""SE-ResNet-18 on ImageNet distilled from converted SE-ResNeXt-101 (32x4d) weights.

    python -m senet_jax.convert --from timm --model legacy_seresnext101_32x4d \
        --input legacy_seresnext101_32x4d.safetensors --output /ckpt/se_resnext101_teacher
    python main.py --config=configs/distill_se_resnext101_to_se_resnet18.py \
        --workdir=/ckpt/se_resnet18_distilled --config.data_dir=/data/tfds \
        --config.distill.teacher=/ckpt/se_resnext101_teacher

The teacher sees the student's augmented batch re-normalised with its own statistics at its own
resolution (timm's legacy weights: 224 px, ImageNet mean/std, bilinear).
"""
import ml_collections

from senet_jax.configs import recipes


def get_config() -> ml_collections.ConfigDict:
  """The SE-ResNet recipe for SE-ResNet-18 plus a frozen SE-ResNeXt-101 teacher (T=1)."""
  config = recipes.se_resnet('se_resnet18')
  config.distill.update(dict(
      teacher='/ckpt/se_resnext101_teacher',  # written by `python -m senet_jax.convert`
      model='se_resnext101_32x4d', model_kwargs=ml_collections.ConfigDict(),
      image_size=224, mean_rgb=(0.485 * 255, 0.456 * 255, 0.406 * 255),
      std_rgb=(0.229 * 255, 0.224 * 255, 0.225 * 255), interpolation='bilinear',
      # ImageNet-scale KD of ResNets (e.g. torchdistill's ResNet-34 -> 18) uses T=1, 0.5/0.5.
      temperature=1.0, alpha=0.5))
  return config
