"""Registered ResNet-family models (stage tables as data)."""
from senet_jax.models.registry import register
from senet_jax.models.resnet import ResNet

_DEPTHS = {
    18: ('basic', (2, 2, 2, 2)),
    34: ('basic', (3, 4, 6, 3)),
    50: ('bottleneck', (3, 4, 6, 3)),
    101: ('bottleneck', (3, 4, 23, 3)),
    152: ('bottleneck', (3, 8, 36, 3)),
}

for _depth, (_block, _stages) in _DEPTHS.items():
  register(f'resnet{_depth}', ResNet, family='resnet', block=_block, stage_sizes=_stages)
  register(f'se_resnet{_depth}', ResNet, family='resnet', block=_block, stage_sizes=_stages,
           se=True)

for _depth in (50, 101):
  _stages = _DEPTHS[_depth][1]
  register(f'resnext{_depth}_32x4d', ResNet, family='resnet', stage_sizes=_stages, groups=32,
           base_width=4)
  register(f'se_resnext{_depth}_32x4d', ResNet, family='resnet', stage_sizes=_stages,
           groups=32, base_width=4, se=True)

# SENet-154 (Caffe release): deep 3x3 stem to 128 channels, 64 groups of width 4 per 64 planes,
# a first 1x1 conv at half the grouped width, 3x3 projection shortcuts after the first stage,
# dropout 0.2 before the classifier.
register('senet154', ResNet, family='resnet', stage_sizes=(3, 8, 36, 3), groups=64,
         base_width=4, reduce_first=2, stem='deep', stem_width=128, project_kernel=3,
         dropout_rate=0.2, se=True)

# timm's ECA-ResNets (Wang et al. 2020 attention on ResNet-D / -T, He et al. 2019): torchvision
# layout, ECA in every bottleneck, average-pool shortcuts; a deep stem 32-32-64 ('d'), a tiered
# one 24-32-64 ('t'), or the 7x7 stem (ecaresnetlight).
_ECA = dict(family='resnet', layout='v1.5', se=True, attn_layer='eca', avg_down=True)
register('ecaresnet26t', ResNet, stage_sizes=(2, 2, 2, 2), stem='deep_tiered', resolution=256,
         **_ECA)
register('ecaresnet50d', ResNet, stage_sizes=(3, 4, 6, 3), stem='deep', **_ECA)
register('ecaresnet50t', ResNet, stage_sizes=(3, 4, 6, 3), stem='deep_tiered', resolution=256,
         **_ECA)
register('ecaresnet101d', ResNet, stage_sizes=(3, 4, 23, 3), stem='deep', **_ECA)
register('ecaresnetlight', ResNet, stage_sizes=(1, 1, 11, 3), **_ECA)
