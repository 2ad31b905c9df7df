"""Memory traffic of a compiled training step, kernel by kernel, from XLA's optimized HLO.

Issue 37 asks, when no GPU is lent, for the bandwidth analysis of the GPU target done on the CPU:
the bytes per image each fusion of the compiled step moves and which changes would cut them.
This script compiles a model's training step (forward, backward, SGD-momentum update, BatchNorm
statistics, as `benchmarks/train_step.py` times it) with XLA's own convolutions (`conv_impl=xla`,
the formulation a GPU runs) and reads the optimized HLO module:

- every top-level instruction of the entry computation is one kernel (a fusion, a convolution,
  a matrix product, a copy); its traffic is the bytes of its operands plus its result, the model
  XLA's cost analysis uses for a kernel that reads each input once;
- the kernel is attributed to the layer its metadata names (`.../blocks_3_1/bn_dw/...`), to the
  forward or backward pass (`transpose(jvp(...))` is the backward), and to a kind (convolution,
  matrix product, reduction, elementwise, copy);
- `bitcast`, `tuple`, `get-tuple-element`, `parameter` and `constant` move nothing.

The CPU compiler fuses less than the GPU one (no multi-output reduction fusions into
convolutions, no cuDNN epilogues), so this is an upper bound on what the GPU step moves, and it
names where the bytes go. In bfloat16, XLA:CPU computes convolutions in float32 and inserts
conversions around them that a GPU never runs; `--dtype=float32` (the default) avoids that, and
the activations of a bfloat16 step on a GPU are half the float32 bytes.

    python benchmarks/hlo_traffic.py --model=efficientnet_b0 --batch=8 --res=224

prints the bytes per image by layer role and kind, the largest kernels, and the traffic a
perfect fuser would leave (each convolution reads its inputs and writes its output once).
"""
from __future__ import annotations

import argparse
import collections
import re
import sys
from dataclasses import dataclass

import roofline  # beside this file
import train_step  # beside this file

DTYPE_BYTES = {'pred': 1, 's8': 1, 'u8': 1, 'bf16': 2, 'f16': 2, 's16': 2, 'u16': 2,
               'f32': 4, 's32': 4, 'u32': 4, 'f64': 8, 's64': 8, 'u64': 8, 'token': 0}
CPU_GROUPED_LOWERING = 'dense grouped-conv lowering (CPU only)'
# Instructions that alias or name a buffer without reading or writing it.
FREE_OPS = frozenset({'parameter', 'constant', 'get-tuple-element', 'tuple', 'bitcast',
                      'after-all', 'partition-id', 'replica-id'})
_ARRAY = re.compile(r'\b([a-z]+\d*)\[([\d,]*)\]')
_INSTRUCTION = re.compile(
    r'^\s*(?:ROOT )?%(?P<name>[\w.\-]+) = (?P<shape>\(.*?\)|\w+\[[\d,]*\](?:\{[^}]*\})?) '
    r'(?P<op>[\w\-]+)\((?P<args>[^)]*)\)(?P<attrs>.*)$')
_COMPUTATION = re.compile(r'^(?P<entry>ENTRY )?%(?P<name>[\w.\-]+) .*\{$')
_OP_NAME = re.compile(r'op_name="([^"]*)"')
_CALLS = re.compile(r'calls=%([\w.\-]+)')


def shape_bytes(shape: str) -> int:
  """Bytes of an HLO shape string: an array `f32[4,8]{1,0}` or a tuple of arrays."""
  total = 0
  for dtype, dims in _ARRAY.findall(shape):
    count = 1
    for dim in filter(None, dims.split(',')):
      count *= int(dim)
    total += DTYPE_BYTES.get(dtype, 4) * count
  return total


@dataclass(frozen=True)
class Kernel:
  """One top-level instruction of the entry computation and the bytes it moves."""
  name: str
  op: str
  kind: str         # convolution, matmul, reduction, elementwise, copy, other, CPU lowering
  op_name: str      # JAX's name stack from the metadata ('' when absent)
  bytes_in: int
  bytes_out: int
  per_image: bool   # its traffic grows with the batch (else: the optimizer's, once a step)

  @property
  def nbytes(self) -> int:
    return self.bytes_in + self.bytes_out


def _computations(hlo_text: str) -> tuple[dict, str]:
  """{computation name: [instruction match, ...]} and the entry computation's name."""
  computations, entry, current = {}, '', None
  for line in hlo_text.splitlines():
    header = _COMPUTATION.match(line)
    if header:
      current = computations.setdefault(header['name'], [])
      entry = header['name'] if header['entry'] else entry
      continue
    match = _INSTRUCTION.match(line)
    if match and current is not None:
      current.append(match)
  return computations, entry


def _kind(op: str, attrs: str, computations: dict) -> str:
  """What a kernel computes: a fusion is named by the heaviest op inside it."""
  if op in ('convolution', 'dot'):
    return 'convolution' if op == 'convolution' else 'matmul'
  if op in ('copy', 'transpose'):
    return 'copy'
  if op == 'fusion':
    called = _CALLS.search(attrs)
    inner = {m['op'] for m in computations.get(called[1], [])} if called else set()
    for heavy, kind in (('convolution', 'convolution'), ('dot', 'matmul'),
                        ('reduce', 'reduction'), ('reduce-window', 'reduction'),
                        ('scatter', 'other'), ('gather', 'other')):
      if heavy in inner:
        return kind
    return 'elementwise'
  if op == 'custom-call':  # on a GPU: cuDNN convolutions, cuBLAS matrix products
    if 'cudnn$conv' in attrs:
      return 'convolution'
    return 'matmul' if 'gemm' in attrs or 'matmul' in attrs else 'other'
  return 'reduction' if op.startswith('reduce') else 'other'


def _inherited_names(entry: list) -> dict:
  """{instruction: op_name}. An instruction XLA created without metadata (a transpose feeding a
  weight-gradient convolution, say) takes a model name (inside `jvp(`) from the instructions
  that use it, else from those it reads, else any name found there."""
  own, users, operands = {}, collections.defaultdict(list), {}
  for match in entry:
    found = _OP_NAME.search(match['attrs'])
    own[match['name']] = found[1] if found else ''
    operands[match['name']] = re.findall(r'%([\w.\-]+)', match['args'])
    for operand in operands[match['name']]:
      users[operand].append(match['name'])

  def search(start: str, edges: dict) -> list:
    seen, frontier, names = {start}, list(edges[start]), []
    while frontier and len(seen) < 64:   # the nearest named neighbours are enough
      node = frontier.pop(0)
      if node in seen or node not in own:
        continue
      seen.add(node)
      if own[node]:
        names.append(own[node])
      else:
        frontier.extend(edges[node])
    return names

  names = {}
  for name, found in own.items():
    candidates = [found] if found else search(name, users) + search(name, operands)
    model = [c for c in candidates if 'jvp(' in c]
    names[name] = (model or candidates or [''])[0]
  return names


def parse_kernels(hlo_text: str, batch: int) -> list[Kernel]:
  """The kernels of the entry computation of an optimized HLO module, in program order.

  A kernel is per-image when one of its arrays has the batch as its leading dimension (rank >=
  2); else it is shared by the batch (the optimizer's pass over the parameters).
  """
  computations, entry = _computations(hlo_text)
  shapes = {m['name']: m['shape'] for body in computations.values() for m in body}
  names = _inherited_names(computations.get(entry, []))
  kernels = []
  for match in computations.get(entry, []):
    if match['op'] in FREE_OPS:
      continue
    operands = list(dict.fromkeys(re.findall(r'%([\w.\-]+)', match['args'])))  # read once
    arrays = [shapes.get(o, '') for o in operands] + [match['shape']]
    kind = _kind(match['op'], match['attrs'], computations)
    if '/conv_dw/' in names[match['name']] and any(map(_dense_grouped_kernel, arrays)):
      kind = CPU_GROUPED_LOWERING
    kernels.append(Kernel(
        name=match['name'], op=match['op'], kind=kind,
        op_name=names[match['name']],
        bytes_in=sum(shape_bytes(shapes.get(o, '')) for o in operands),
        bytes_out=shape_bytes(match['shape']),
        per_image=('jvp(' in names[match['name']]
                   or any(_leading_batch(a, batch) for a in arrays))))
  return kernels


def _dense_grouped_kernel(shape: str) -> bool:
  """A [k, k, C, C] array in any order (k <= 11 < C): XLA:CPU's weight gradient of a depthwise
  convolution is a dense C x C convolution whose diagonal is then selected; a GPU runs one
  grouped kernel."""
  for _, dims in _ARRAY.findall(shape):
    d = sorted(int(x) for x in filter(None, dims.split(',')))
    if len(d) == 4 and d[0] == d[1] <= 11 and d[2] == d[3] > 11:
      return True
  return False


def _leading_batch(shape: str, batch: int) -> bool:
  """Whether an array of `shape` (or of a tuple) has rank >= 2 and `batch` rows."""
  return any(len(dims.split(',')) >= 2 and dims.split(',')[0] == str(batch)
             for _, dims in _ARRAY.findall(shape))


# Layer roles, from the module names the models use (first match wins).
ROLES = (('se', re.compile(r'/(se|attn|gate)/')),
         ('batchnorm', re.compile(r'/(bn\w*|norm\w*)/')),
         ('depthwise conv', re.compile(r'/conv_dw/')),
         ('activation', re.compile(r'jit\((silu|swish|relu\d*|hard_\w+|gelu|sigmoid|_where)\)'
                                   r'|/(select_n|max|relu)/')),
         ('shortcut + residual sum', re.compile(r'_shortcut|/downsample/')),
         ('1x1 conv', re.compile(r'/(conv_pw\w*|conv_head|conv[13]|downsample)/')),
         ('3x3 conv', re.compile(r'/(conv2|conv_stem|conv1)/')),
         ('classifier + loss', re.compile(r'/(classifier|fc|head)/|log_softmax|softmax')))


def role(op_name: str) -> str:
  """The layer role a kernel serves; 'optimizer' outside the model's forward/backward."""
  if 'jvp(' not in op_name:
    return 'optimizer' if op_name else 'unattributed'
  for label, pattern in ROLES:
    if pattern.search(op_name + '/'):
      return label
  return 'other layers'


def layer_path(op_name: str) -> str:
  """The layer a kernel belongs to, the same in both passes: 'blocks_5_3/conv_dw'."""
  match = re.search(r'jvp\([^)]*\)\)?/(.*)/[^/]+$', op_name)
  return match[1] if match else ''


def direction(op_name: str) -> str:
  """'backward' for autodiff's transpose, 'forward' inside jvp, else 'update'."""
  if 'transpose(' in op_name:
    return 'backward'
  return 'forward' if 'jvp(' in op_name else 'update'


def summarize(kernels: list[Kernel], batch: int, target_batch: int) -> dict:
  """Bytes per image at `target_batch`: activation traffic scales with the batch, the
  optimizer's (one pass over the parameters) is shared by the batch."""
  def per_image(k: Kernel) -> float:
    return k.nbytes / (batch if k.per_image else target_batch)
  by_role = collections.Counter()
  by_kind = collections.Counter()
  by_direction = collections.Counter()
  for k in kernels:
    by_role[role(k.op_name)] += per_image(k)
    by_kind[k.kind] += per_image(k)
    by_direction[direction(k.op_name)] += per_image(k)
  # A perfect fuser: only convolutions and matrix products touch memory. Where XLA:CPU lowered
  # a depthwise weight gradient densely, a GPU's one grouped kernel reads the layer's input and
  # output gradient and writes its kernel: the bytes of that layer's forward convolution.
  floor = sum(per_image(k) for k in kernels if k.kind in ('convolution', 'matmul'))
  lowered = {layer_path(k.op_name) for k in kernels if k.kind == CPU_GROUPED_LOWERING}
  floor += sum(per_image(k) for k in kernels if k.kind == 'convolution'
               and direction(k.op_name) == 'forward' and layer_path(k.op_name) in lowered)
  cpu_only = sum(per_image(k) for k in kernels if k.kind == CPU_GROUPED_LOWERING)
  largest = sorted(kernels, key=lambda k: -per_image(k))
  return {'total': sum(by_role.values()), 'by_role': dict(by_role.most_common()),
          'by_kind': dict(by_kind.most_common()),
          'by_direction': dict(by_direction.most_common()), 'conv_floor': floor,
          'cpu_only': cpu_only,
          'kernels': len(kernels), 'largest': [(k, per_image(k)) for k in largest[:15]]}


def compile_step_hlo(model_name: str, batch: int, res: int, dtype: str,
                     conv_impl: str) -> tuple[str, float]:
  """The optimized HLO text of the training step and XLA's own 'bytes accessed'."""
  import jax
  import jax.numpy as jnp
  from senet_jax.models import create_model
  model = create_model(model_name, conv_impl=conv_impl,
                       dtype=jnp.bfloat16 if dtype == 'bfloat16' else jnp.float32)
  x = jax.ShapeDtypeStruct((batch, res, res, 3), jnp.float32)
  y = jax.ShapeDtypeStruct((batch,), jnp.int32)
  variables = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, res, res, 3)))
  # The step `make bench` times, here on abstract arguments (nothing allocated).
  step, opt = train_step.sgd_training_step(model)
  opt_state = jax.eval_shape(opt.init, variables['params'])
  compiled = jax.jit(step, donate_argnums=(0, 1, 2)).lower(
      variables['params'], variables['batch_stats'], opt_state, x, y,
      jax.random.key(1)).compile()
  cost = roofline._cost(compiled.cost_analysis())  # noqa: SLF001  (both jax return types)
  return compiled.as_text(), float(cost.get('bytes accessed', float('nan')))


def print_report(name: str, summary: dict, xla_bytes_per_image: float) -> None:
  """The summary as three small tables and the largest kernels."""
  mb = 1e6
  print(f'\n{name}: {summary["total"] / mb:.1f} MB per image over {summary["kernels"]} '
        f'kernels (XLA cost analysis: {xla_bytes_per_image / mb:.1f} MB), of which XLA:CPU\'s '
        f'dense lowering of depthwise weight gradients {summary["cpu_only"] / mb:.1f} MB; '
        f'convolutions and matrix products alone (a perfect fuser, grouped weight gradients '
        f'as one kernel): {summary["conv_floor"] / mb:.1f} MB')
  for title in ('by_direction', 'by_role', 'by_kind'):
    print(f'| {title.replace("_", " ")} | MB per image | share |\n|---|---|---|')
    for key, value in summary[title].items():
      print(f'| {key} | {value / mb:.1f} | {value / summary["total"]:.0%} |')
  print('| largest kernels | kind | MB per image |\n|---|---|---|')
  for kernel, value in summary['largest']:
    where = kernel.op_name.replace('jit(step)/', '')[:90]
    print(f'| {kernel.name} `{where}` | {kernel.kind} | {value / mb:.1f} |')


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--models', default='efficientnet_b0,se_resnet50')
  parser.add_argument('--batch', type=int, default=8, help='batch the step is compiled at')
  parser.add_argument('--target_batch', type=int, default=256,
                      help='batch the optimizer traffic is shared by (the GPU target: 256)')
  parser.add_argument('--res', type=int, default=224)
  parser.add_argument('--dtype', default='float32', choices=('float32', 'bfloat16'))
  parser.add_argument('--conv_impl', default='xla', help="'xla': the GPU's formulation")
  parser.add_argument('--hlo', help='read this optimized HLO text instead of compiling')
  parser.add_argument('--dump', help='also write each compiled module to DUMP.MODEL.hlo.txt')
  args = parser.parse_args(argv)
  if args.hlo:
    with open(args.hlo) as f:
      text, xla_bytes = f.read(), float('nan')
    kernels = parse_kernels(text, args.batch)
    print_report(args.hlo, summarize(kernels, args.batch, args.target_batch), xla_bytes)
    return 0
  from senet_jax.utils import xla_flags  # noqa: F401  (main.py's CPU engine, before JAX starts)
  for model_name in args.models.split(','):
    text, xla_bytes = compile_step_hlo(model_name, args.batch, args.res, args.dtype,
                                       args.conv_impl)
    if args.dump:
      with open(f'{args.dump}.{model_name}.hlo.txt', 'w') as f:
        f.write(text)
    summary = summarize(parse_kernels(text, args.batch), args.batch, args.target_batch)
    print_report(f'{model_name} {args.res} px, {args.dtype}, batch {args.batch}', summary,
                 xla_bytes / args.batch)
  return 0


if __name__ == '__main__':
  sys.exit(main())
