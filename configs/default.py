"""Every configuration field, commented. Variant files import this and override fields.

Override any field on the command line: `--config.batch_size=512`. The config is locked, so a
misspelt field (`--config.batchsize=512`) is an error rather than silently ignored. Durations
are in epochs when `num_epochs` > 0, else in steps (`num_train_steps`); the run's length is set
by exactly one of the two (see num_train_steps below).
"""
import os

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  """Defaults: SE-ResNet-50 on ImageNet with the common SGD + cosine recipe."""
  config = ml_collections.ConfigDict()
  config.seed = 0

  # ---- Model -----------------------------------------------------------------------------
  config.model = 'se_resnet50'          # any name from senet_jax.models.list_models()
  # Fields passed to create_model(config.model, **model_kwargs). Variant files list the knobs
  # they expose (e.g. se_reduction, se_position) so that the command line can override them.
  config.model_kwargs = ml_collections.ConfigDict()
  config.dtype = 'float32'              # compute dtype: 'float32' or 'bfloat16' (params stay f32)

  # ---- Data ------------------------------------------------------------------------------
  config.dataset = 'imagenet2012'       # TFDS name; 'senet_digits' is the offline dataset
  config.data_dir = ml_collections.config_dict.placeholder(str)  # TFDS data_dir (None: default)
  config.train_split = 'train'
  config.eval_split = 'validation'
  config.num_classes = 1000             # >= the dataset's label count (checked); more is allowed
  config.image_size = 224               # training and evaluation resolution
  config.eval_crop_fraction = -1.0      # center-crop fraction; -1: res / (res + 32) (official)
  config.interpolation = 'bicubic'      # 'bicubic' or 'bilinear' resize
  config.mean_rgb = (0.485 * 255, 0.456 * 255, 0.406 * 255)
  config.std_rgb = (0.229 * 255, 0.224 * 255, 0.225 * 255)
  config.crop_area_range = (0.08, 1.0)  # Inception random crop: fraction of the image area
  config.random_flip = True             # horizontal flip at training time
  config.input_dtype = 'float32'        # dtype of the batches the pipeline yields
  # Input backend: 'tfdata' (TensorFlow decodes and augments) or 'grain' (Grain + Pillow/numpy,
  # no TensorFlow: senet_jax/data/grain_pipeline.py). Same order and resume; other random draws.
  config.input_backend = 'tfdata'
  config.augment = 'none'               # 'none', 'autoaugment' (policy v0), 'randaugment'
  config.randaugment_num_layers = 2     # RandAugment N
  config.randaugment_magnitude = 10.0   # RandAugment M (float: progressive stages interpolate)
  config.mixup_alpha = 0.0              # > 0 enables mixup
  config.cutmix_alpha = 0.0             # > 0 enables cutmix

  # ---- Optimisation ----------------------------------------------------------------------
  config.batch_size = 256               # global batch, all hosts and devices together
  config.eval_batch_size = 256          # global eval batch
  config.grad_accum_steps = 1           # micro-batches per optimizer step (batch_size total)
  # The run's length: num_epochs > 0 (ceil(num_epochs * steps per epoch)) or num_train_steps > 0,
  # the other <= 0. Both > 0 is an error unless they give the same number of steps (neither
  # silently wins: this file sets num_epochs, so `--config.num_train_steps=40` alone would
  # otherwise be ignored or ignore it); to train by steps add `--config.num_epochs=0`.
  config.num_epochs = 100.0             # > 0: length in epochs
  config.num_train_steps = -1           # > 0: length in steps (with num_epochs=0)
  config.optimizer = 'sgd'              # 'sgd', 'rmsprop_tf', 'adamw', 'lars', 'lamb'
  config.learning_rate = 0.1            # per 256 images; scaled by batch_size / 256
  config.lr_schedule = 'cosine'         # 'cosine', 'exponential' (staircase), 'step', 'linear',
                                        # 'constant', 'poly'
  config.warmup_epochs = 5.0
  config.lr_decay_epochs = 2.4          # exponential: decay every this many epochs
  config.lr_decay_factor = 0.97         # exponential: multiply by this at each decay
  config.lr_step_epochs = (30, 60, 90)  # step: divide by 10 at these epochs
  config.momentum = 0.9
  config.nesterov = True
  config.rmsprop_decay = 0.9
  config.rmsprop_epsilon = 1e-3
  # LARS / LAMB ('lars', 'lamb'): weight_decay is applied inside the update (not in the loss),
  # and parameters matching weight_decay_exclude skip both it and the trust ratio.
  config.lars_trust_coefficient = 1e-3  # LARS eta (tf.contrib LARSOptimizer, MLPerf)
  config.lars_epsilon = 0.0             # LARS: added to the trust ratio's denominator
  config.lr_poly_power = 2.0            # 'poly' schedule: (1 - t/T)^power (MLPerf ResNet-50)
  config.weight_decay = 1e-4            # L2 term in the loss
  # Regex (re.search on 'module/.../param') of parameters without weight decay: BN and biases.
  config.weight_decay_exclude = r'(bn[^/]*/scale|bias)$'
  config.label_smoothing = 0.1
  config.grad_clip_norm = 0.0           # > 0 clips the global gradient norm
  config.ema_decay = 0.0                # > 0 keeps an EMA of the weights, evaluated too
  config.ema_warmup = False             # decay min(ema_decay, (1 + t) / (10 + t))

  # ---- Progressive learning (EfficientNetV2 paper, Algorithm 1) -------------------------
  # num_stages M > 0 splits training into M equal stages; stage i trains at an image size and
  # with regularisation interpolated linearly from the (first, last) pairs below. Evaluation
  # stays at config.image_size. See senet_jax/training/progressive.py.
  config.progressive = ml_collections.ConfigDict(dict(
      num_stages=0,                       # 0: off
      image_size=(128, 300),              # training resolution of the first / last stage
      dropout_rate=(0.1, 0.3),            # model dropout_rate (replaces the model's own)
      randaugment_magnitude=(5.0, 15.0),  # needs augment='randaugment'
      mixup_alpha=(0.0, 0.0),
      size_multiple=8,                    # intermediate sizes rounded to a multiple of this
  ))

  # ---- Knowledge distillation (senet_jax/training/distill.py) ----------------------------
  # loss = (1 - alpha) * CE(labels) + alpha * T^2 * KL(teacher_T || student_T), the teacher
  # frozen (eval mode, no gradient, no EMA) and run inside the train step on the same mesh.
  config.distill = ml_collections.ConfigDict(dict(
      teacher='',                         # senet_jax checkpoint dir (trained or converted); '' off
      model='',                           # the teacher's registered model name
      model_kwargs=ml_collections.ConfigDict(),  # its create_model fields (e.g. layout)
      image_size=0,                       # teacher input size; 0: config.image_size
      mean_rgb=(),                        # teacher normalisation; (): config.mean_rgb / std_rgb
      std_rgb=(),
      interpolation='',                   # resize to image_size; '': config.interpolation
      temperature=4.0,                    # T (Hinton et al.)
      alpha=0.5,                          # weight of the soft (teacher) term
  ))

  # ---- Checkpoints, logging, evaluation --------------------------------------------------
  config.log_every_steps = 100
  config.eval_every_epochs = 1.0        # <= 0: only at the end; > 0 must be >= one step
  config.checkpoint_every_steps = 1000
  config.keep_checkpoints = 3
  config.keep_best_checkpoint = True    # also keep the best by eval top-1
  # Extra evaluators, comma separated (metrics '<name>_top1', 'ema_<name>_top1', ...): shipped
  # 'imagenet', 'real' (ImageNet-ReaL), 'v2', 'a', 'r', 'sketch' (senet_jax.evaluation.SHIPPED),
  # names defined in eval_definitions, or 'name=dataset:split'. The main eval split keeps the
  # plain names (top1, ema_top1, ...).
  config.evals = ''
  # name -> dict(dataset, split, label_key, class_subset, image_size, crop_fraction, flip)
  config.eval_definitions = ml_collections.ConfigDict()
  config.eval_tta = 'none'              # 'flip': mean of the probabilities of image and mirror
  config.init_from = ''                 # checkpoint dir to start from (fine-tuning)
  config.init_from_exclude = ('fc', 'classifier')  # top-level params re-initialised on init_from
  # JAX profiler trace of steps start+1 .. end (as the log lines count them) on process 0, into
  # workdir/profile (TensorBoard's profile tab, or xprof): e.g. (100, 105); () is off.
  config.profile_steps = ()
  config.profile = False                # older switch: True = profile_steps (10, 15) of this run
  # Model FLOPs utilisation in the log lines: the peak FLOP/s of one device. 0: from the table
  # in training/mfu.py by device kind (TPU v4/v5e/v5p/v6e, A100/H100/H200 bf16; none for CPU).
  config.peak_flops_per_device = 0.0
  # Weights & Biases project: '' is off (wandb is not even imported); set it to log the same
  # scalars as TensorBoard (entity / mode from WANDB_ENTITY / WANDB_MODE, e.g. offline).
  config.wandb_project = ''
  # Resuming with a config that changes the trajectory (model, batch, optimizer, schedule,
  # dtype, data, ...) is an error unless this is True; the change is then recorded in
  # workdir/config_changes.json. Logging/eval/checkpoint cadence may change freely.
  config.allow_config_change = False

  # ---- Devices: mesh and memory ----------------------------------------------------------
  # A data x fsdp mesh over every device (-1: the rest of the devices). The batch is split over
  # both axes; params, optimizer state and EMA are sharded over `fsdp` (per-device state memory
  # ~1/mesh_fsdp). mesh_fsdp=1 is plain data parallelism with a replicated state.
  config.mesh_data = -1
  config.mesh_fsdp = 1
  # Multi-slice / multi-node: how many DCN granules the data axis spans, fsdp staying inside
  # one. -1: one per TPU slice (devices' slice_index; 1 on a single slice or without slices);
  # n > 1 without slices: n hosts, equal groups of consecutive processes (GPU nodes under
  # Slurm). training/sharding.py.
  config.mesh_dcn_data = -1
  # Rematerialisation (training/remat.py): 'none', 'block' (recompute each block's interior
  # in the backward pass) or 'stage' (keep only each stage's input); remat_policy 'nothing'
  # (save nothing inside a region) or 'conv' (keep convolution outputs, recompute only BN /
  # activations / SE).
  config.remat = 'none'
  config.remat_policy = 'nothing'
  # Before compiling, the step's memory is estimated from shapes (a lower bound:
  # training/memory.py) and a step that cannot fit the host's RAM (CPU) or a device's memory
  # is refused with one line; False skips the check.
  config.memory_check = True

  # ---- Speed -----------------------------------------------------------------------------
  config.conv_impl = 'auto'             # grouped/depthwise conv formulation ('auto', 'xla', ...)
  # Persistent XLA compilation cache: a rerun or resume skips most compilation (EfficientNet-B0
  # training step on CPU: 19.9 s -> 3.9 s). '' turns it off.
  # (SENET_COMPILATION_CACHE_DIR overrides the default; the test session points it at a tmp dir.)
  config.compilation_cache_dir = os.environ.get('SENET_COMPILATION_CACHE_DIR') or os.path.join(
      os.path.expanduser('~'), '.cache', 'senet_jax', 'xla')
  return config
