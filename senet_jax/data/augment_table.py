"""The AutoAugment / RandAugment op table, framework-free: one fact shared by both input backends.

As in the TPU EfficientNet reference (`tensorflow/tpu/models/official/efficientnet/
autoaugment.py`): levels 0..MAX_LEVEL, geometric ops fill with FILL, the ImageNet policy v0 and
RandAugment's op list. `argument(name, frac, consts)` maps a level fraction (level / MAX_LEVEL)
to the op's argument with plain arithmetic, so it serves TF tensors (augment.py, tf.data) and
numpy / Python floats (augment_ops.py, Grain) alike. Ops in SIGNED get a random sign.
"""
from __future__ import annotations

MAX_LEVEL = 10.0
FILL = 128

# ImageNet policy v0: 25 sub-policies of two (op, probability, level).
POLICY_V0 = [
    [('Equalize', 0.8, 1), ('ShearY', 0.8, 4)], [('Color', 0.4, 9), ('Equalize', 0.6, 3)],
    [('Color', 0.4, 1), ('Rotate', 0.6, 8)], [('Solarize', 0.8, 3), ('Equalize', 0.4, 7)],
    [('Solarize', 0.4, 2), ('Solarize', 0.6, 2)], [('Color', 0.2, 0), ('Equalize', 0.8, 8)],
    [('Equalize', 0.4, 8), ('SolarizeAdd', 0.8, 3)], [('ShearX', 0.2, 9), ('Rotate', 0.6, 8)],
    [('Color', 0.6, 1), ('Equalize', 1.0, 2)], [('Invert', 0.4, 9), ('Rotate', 0.6, 0)],
    [('Equalize', 1.0, 9), ('ShearY', 0.6, 3)], [('Color', 0.4, 7), ('Equalize', 0.6, 0)],
    [('Posterize', 0.4, 6), ('AutoContrast', 0.4, 7)], [('Solarize', 0.6, 8), ('Color', 0.6, 9)],
    [('Solarize', 0.2, 4), ('Rotate', 0.8, 9)], [('Rotate', 1.0, 7), ('TranslateY', 0.8, 9)],
    [('ShearX', 0.0, 0), ('Solarize', 0.8, 4)], [('ShearY', 0.8, 0), ('Color', 0.6, 4)],
    [('Color', 1.0, 0), ('Rotate', 0.6, 2)], [('Equalize', 0.8, 4), ('Equalize', 0.0, 8)],
    [('Equalize', 1.0, 4), ('AutoContrast', 0.6, 2)], [('ShearY', 0.4, 7), ('SolarizeAdd', 0.6, 7)],
    [('Posterize', 0.8, 2), ('Solarize', 0.6, 10)], [('Solarize', 0.6, 8), ('Equalize', 0.6, 1)],
    [('Color', 0.8, 6), ('Rotate', 0.4, 5)],
]
RANDAUGMENT_OPS = ['AutoContrast', 'Equalize', 'Invert', 'Rotate', 'Posterize', 'Solarize',
                   'Color', 'Contrast', 'Brightness', 'Sharpness', 'ShearX', 'ShearY',
                   'TranslateX', 'TranslateY', 'Cutout', 'SolarizeAdd']
# The translate / cutout magnitudes differ between the two policies (reference hparams).
AUTOAUGMENT_CONSTS = dict(translate_const=250.0, cutout_const=100)
RANDAUGMENT_CONSTS = dict(translate_const=100.0, cutout_const=40)
RANDAUGMENT_PROB = 0.5  # each RandAugment layer applies its op with this probability
SIGNED = frozenset({'Rotate', 'ShearX', 'ShearY', 'TranslateX', 'TranslateY'})

# level fraction -> argument. Integer arguments (Posterize bits, Solarize thresholds, Cutout
# half-size) are truncated by the caller in its own framework (tf.cast / int).
_ARGUMENTS = {
    'Rotate': lambda frac, c: frac * 30.0,                    # degrees
    'ShearX': lambda frac, c: frac * 0.3,                     # shear factor
    'ShearY': lambda frac, c: frac * 0.3,
    'TranslateX': lambda frac, c: frac * c['translate_const'],  # pixels
    'TranslateY': lambda frac, c: frac * c['translate_const'],
    'Cutout': lambda frac, c: frac * c['cutout_const'],       # half-size in pixels (int)
    'Posterize': lambda frac, c: frac * 4,                    # bits dropped: 8 - int(.) kept
    'Solarize': lambda frac, c: frac * 256,                   # threshold (int)
    'SolarizeAdd': lambda frac, c: frac * 110,                # added below 128 (int)
    'Color': lambda frac, c: frac * 1.8 + 0.1,                # blend factors (enhance)
    'Contrast': lambda frac, c: frac * 1.8 + 0.1,
    'Brightness': lambda frac, c: frac * 1.8 + 0.1,
    'Sharpness': lambda frac, c: frac * 1.8 + 0.1,
    'AutoContrast': lambda frac, c: None,
    'Equalize': lambda frac, c: None,
    'Invert': lambda frac, c: None,
}
assert set(_ARGUMENTS) == set(RANDAUGMENT_OPS)
assert {op for sub in POLICY_V0 for op, _, _ in sub} <= set(RANDAUGMENT_OPS)


def argument(name: str, frac, consts: dict | None = None):
  """The unsigned argument of op `name` at level fraction `frac` (None: the op takes none)."""
  if name not in _ARGUMENTS:
    raise ValueError(f'unknown augmentation op {name!r}; known: {RANDAUGMENT_OPS}')
  return _ARGUMENTS[name](frac, consts or AUTOAUGMENT_CONSTS)


def cutout_window(rows, cols, center, size):
  """Cutout's mask: pixels within `size` (Chebyshev distance) of `center` (row, col).

  `rows` (H, 1) and `cols` (1, W) are the pixel coordinates in the caller's framework (tf.range /
  np.arange); `abs`, `-`, `<=` and `&` broadcast the same for TF tensors and numpy arrays.
  """
  return (abs(rows - center[0]) <= size) & (abs(cols - center[1]) <= size)
