"""Transfer learning (EfficientNet paper, Table 5 pattern): fine-tune ImageNet weights on CIFAR-10.

    python -m senet_jax.convert --from timm --model tf_efficientnet_b0 \
        --input model.safetensors --output /ckpt/b0_imagenet
    python main.py --config=configs/transfer_cifar10.py --workdir=/ckpt/b0_cifar10 \
        --config.init_from=/ckpt/b0_imagenet

Every weight but the classifier comes from `init_from` (`init_from_exclude`); images are
upsampled to the model's resolution, as in the paper's transfer experiments.
"""
from senet_jax.configs import recipes


def get_config():
  """EfficientNet-B0 fine-tuned on CIFAR-10 with SGD from an ImageNet checkpoint."""
  config = recipes.efficientnet('efficientnet_b0')
  config.dataset = 'cifar10'
  config.train_split = 'train'
  config.eval_split = 'test'
  config.num_classes = 10
  config.init_from = ''                 # set on the command line: a converted/trained ckpt
  config.init_from_exclude = ('classifier',)
  config.augment = 'none'
  config.crop_area_range = (0.5, 1.0)
  config.eval_crop_fraction = 1.0       # CIFAR images are already tight crops
  config.batch_size = 256
  config.eval_batch_size = 500
  config.num_epochs = 10.0
  config.optimizer = 'sgd'
  config.learning_rate = 0.01
  config.lr_schedule = 'cosine'
  config.warmup_epochs = 0.5
  config.weight_decay = 1e-5
  config.ema_decay = 0.0
  config.dtype = 'float32'
  return config
