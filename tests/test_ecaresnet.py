"""timm's ECA-ResNets (ResNet-D / -T: deep or tiered stem, average-pool shortcuts, ECA) as
ResNet data: exact parameter counts and logit parity with timm through the converter."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from senet_jax.models import create_model, layers, model_info

torch = pytest.importorskip('torch')
timm = pytest.importorskip('timm')

from senet_jax.convert import timm as timm_convert  # noqa: E402
from test_convert import compare, images, randomised_timm, torch_logits  # noqa: E402

NAMES = ('ecaresnet26t', 'ecaresnet50d', 'ecaresnet50t', 'ecaresnet101d', 'ecaresnetlight')


@pytest.mark.parametrize('name', NAMES)
def test_parameter_count_equals_timm(name):
  expected = sum(p.numel() for p in timm.create_model(name, pretrained=False).parameters())
  model = create_model(name)
  abstract = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3))))
  assert layers.count_params(abstract['params']) == expected
  assert model_info(name).family == 'resnet'  # a ResNet variant, not a new family


def test_stems_and_shortcuts_have_timms_shapes():
  params = jax.eval_shape(lambda: create_model('ecaresnet26t').init(
      jax.random.key(0), jnp.zeros((1, 64, 64, 3))))['params']
  # tiered stem 24-32-64 (timm: 3 * (32 // 4), 32, 2 * 32)
  assert [params[f'stem_conv{i}']['kernel'].shape[-1] for i in (1, 2, 3)] == [24, 32, 64]
  # avg_down: the strided shortcut's conv is 1x1 with stride 1 after a 2x2 average pool
  assert params['layer2_0']['downsample_conv']['kernel'].shape == (1, 1, 256, 512)


@pytest.mark.parametrize('size', [5, 6, 7])
def test_avg_pool_ceil_matches_torch(size):
  x = np.random.RandomState(0).randn(2, size, size, 3).astype(np.float32)
  pool = torch.nn.AvgPool2d(2, 2, ceil_mode=True, count_include_pad=False)
  expected = pool(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy().transpose(0, 2, 3, 1)
  np.testing.assert_allclose(layers.avg_pool_ceil(jnp.asarray(x), 2, 2), expected, rtol=1e-6,
                             atol=1e-6)


# (timm name, timm layer overrides, size): the tiered stem at an odd map size (72 px: the
# shortcuts pool 9x9 and 5x5 maps, partial windows), the deep stem with one block per stage.
# The second repeats the first's code paths but the stem width (slow suite).
PARITY = [('ecaresnet26t', {}, 72),
          pytest.param('ecaresnet50d', {'layers': [1, 1, 1, 1]}, 64, marks=pytest.mark.slow)]


@pytest.mark.parametrize('name,timm_kwargs,size', PARITY)
def test_logit_parity_with_timm(name, timm_kwargs, size):
  reference = randomised_timm(name, **timm_kwargs)
  x = images(size)
  expected = torch_logits(reference, x)
  state = {k: v.numpy() for k, v in reference.state_dict().items()}
  overrides = {'stage_sizes': tuple(timm_kwargs['layers'])} if timm_kwargs else {}
  model, variables = timm_convert.from_timm(state, name, **overrides)
  compare(expected, model.apply(variables, x))
