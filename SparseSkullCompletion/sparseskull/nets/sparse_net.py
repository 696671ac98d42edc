"""The paper's sparse completion auto-encoder (Li et al. 2023, Table 1), on any sparse backend.

Encoder: a kernel-3 convolution, then six times a kernel-2 stride-2 convolution (downsampling)
followed by a kernel-3 convolution. Decoder: six generative stride-2 transposed convolutions
(the first with kernel 4, the others kernel 2), each followed by a kernel-3 convolution, a kernel-1
classifier and pruning. Every convolution but the classifiers is followed by batch norm and ELU,
as in MinkowskiEngine's completion example; the classifiers have a bias. With ``ch1`` this gives
434,686 parameters, the count MinkowskiEngine reports for the paper's network.

Skip connections (``skips=True``, the paper's reference code): each decoder level, after its refining
convolution, is united with the encoder's output at the same stride (the union of their points, features
summed where both have one), and the level's classifier and pruning run on that union. The decoder thus
keeps the input's points ("maintaining the original input coordinates", the paper's Methods) and only
adds what is missing and drops what is wrong. The skips add no parameter.

Pruning: in training a generated point is kept when its logit > 0 or it lies in the ground truth
at that level (not at the last level, whose output is the prediction); at inference when its
logit > tau.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from sparseskull.sparse.backends import from_backend
from sparseskull.sparse.functional import check_point_cap, generative_conv_transpose_elu
from sparseskull.sparse.nn import (
    SparseActivation,
    SparseBatchNorm,
    SparseConv3d,
    SparseConvNormAct,
    SparseGenerativeConvTranspose3d,
    features,
    fold_norm,
    fusable,
    point_count,
    prune,
    release_maps,
    target_mask,
    union,
)
from sparseskull.sparse.tensor import CoordinateSet

CHANNEL_PRESETS = {"ch1": (8, 8, 16, 16, 32, 32, 64), "ch2": (22, 32, 32, 128, 156, 256, 388)}
TOTAL_STRIDE = 64


def parse_channels(spec) -> tuple[int, ...]:
    """A preset name ('ch1', 'ch2') or seven channel counts (list or comma-separated string)."""
    if isinstance(spec, str):
        if spec in CHANNEL_PRESETS:
            return CHANNEL_PRESETS[spec]
        spec = [s for s in spec.replace(" ", "").split(",") if s]
    try:
        channels = tuple(int(c) for c in spec)
    except (TypeError, ValueError):
        raise ValueError(f"channels must be {' or '.join(CHANNEL_PRESETS)} or seven integers; got {spec!r}") from None
    if len(channels) != 7 or min(channels) < 1:
        raise ValueError(f"the network has seven levels: give seven positive channel counts, got {channels}")
    return channels


def _block(conv: nn.Module, channels: int) -> nn.Sequential:
    return SparseConvNormAct(conv, SparseBatchNorm(channels), SparseActivation(nn.ELU()))


class GenerativeBlock(nn.Module):
    """Generative transposed convolution, batch norm, ELU (the conv takes the point cap)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int):
        super().__init__()
        self.conv = SparseGenerativeConvTranspose3d(in_channels, out_channels, kernel_size, bias=False)
        self.norm = SparseBatchNorm(out_channels)
        self.act = SparseActivation(nn.ELU())

    def forward(self, x, max_points: int | None = None, level: str = ""):
        if self.conv.kernel_size == 2 and fusable(x, self.norm, self.act):  # inference: one pass (see SparseConvNormAct)
            weight, bias = fold_norm(self.conv, self.norm)
            return generative_conv_transpose_elu(x, weight, bias, self.act.fn.alpha, max_points, level)
        return self.act(self.norm(self.conv(x, max_points=max_points, level=level)))


@dataclass
class LevelOutput:
    """One decoder level: its generated points' logits and which of them are ground truth."""

    logits: torch.Tensor  # (N,) classifier logits of the generated points
    target: torch.Tensor | None  # (N,) bool, when a ground truth was given
    kept: int  # points kept by pruning
    given: torch.Tensor | None = None  # (N,) bool, with a ground truth and mark_given: the point is in the input at this level


@dataclass
class CompletionOutput:
    output: object  # the pruned sparse tensor at stride 1: the completed skull
    levels: list[LevelOutput]


class SparseCompletionNet(nn.Module):
    """Table 1 of the paper; ``channels``: 'ch1', 'ch2' or seven integers; ``skips``: unite each decoder
    level with the encoder's output at its stride (the reference code's additive skips)."""

    def __init__(self, channels="ch1", skips: bool = False):
        super().__init__()
        self.channels = parse_channels(channels)
        self.skips = bool(skips)
        c = self.channels
        enc = [_block(SparseConv3d(1, c[0], 3, bias=False), c[0])]
        for i in range(1, 7):
            enc.append(
                nn.Sequential(
                    _block(SparseConv3d(c[i - 1], c[i], 2, stride=2, bias=False), c[i]),
                    _block(SparseConv3d(c[i], c[i], 3, bias=False), c[i]),
                )
            )
        self.encoder = nn.ModuleList(enc)
        self.up = nn.ModuleList()
        self.refine = nn.ModuleList()
        self.classify = nn.ModuleList()
        for i in range(6, 0, -1):
            kernel = 4 if i == 6 else 2
            self.up.append(GenerativeBlock(c[i], c[i - 1], kernel))
            self.refine.append(_block(SparseConv3d(c[i - 1], c[i - 1], 3, bias=False), c[i - 1]))
            self.classify.append(SparseConv3d(c[i - 1], 1, 1, bias=True))

    def forward(self, x, target: CoordinateSet | None = None, tau: float = 0.0, max_points: int | None = None,
                oracle: bool = False, mark_given: bool = False) -> CompletionOutput:
        """``x``: the defective skull (features 1, stride 1). ``target``: the complete skull's coordinates,
        which guide pruning in training. ``max_points``: cap on the points of any decoder level.
        ``oracle``: keep exactly the target's points at every level, the point counts of a perfect
        network (benchmarks of an untrained network use it). ``mark_given``: with a target, mark each level's
        points that are in the input (``LevelOutput.given``), which a weighted loss needs and nothing else does."""
        if oracle and target is None:
            raise ValueError("oracle pruning needs the target")
        if point_count(x) == 0:
            raise ValueError("the input skull is empty: there is nothing to complete")
        inputs = x
        given_set = from_backend(inputs).cset if mark_given and target is not None else None
        encoded = []  # the encoder's output at strides 1, 2, ..., 32: the skips' sources
        for block in self.encoder:
            x = block(x)
            if self.skips:
                encoded.append(x)
        release_maps(inputs)  # the input level is done: its kernel maps go now, though the caller keeps the input
        if encoded:
            encoded.pop()  # stride 64 is the bottleneck itself
        levels: list[LevelOutput] = []
        for depth, (up, refine, classify) in enumerate(zip(self.up, self.refine, self.classify)):
            last = depth == len(self.up) - 1
            where = f"decoder level {depth + 1} of {len(self.up)}"
            x = refine(up(x, max_points=max_points, level=where))
            if self.skips:
                generated = point_count(x)
                x = union(x, encoded.pop())
                check_point_cap(point_count(x), generated, max_points, where)
            logits = features(classify(x))[:, 0]
            truth = target_mask(x, target) if target is not None else None
            given = target_mask(x, given_set) if given_set is not None else None
            keep = truth if oracle else logits > tau
            if self.training and truth is not None and not last:
                keep = keep | truth
            levels.append(LevelOutput(logits, truth, int(keep.sum()), given))
            x = prune(x, keep)
            if point_count(x) == 0:  # nothing kept: the completion is empty (and MinkowskiEngine
                break  # cannot convolve an empty tensor), so the finer levels are not run
        return CompletionOutput(x, levels)

    def parameter_count(self) -> int:
        return sum(p.numel() for p in self.parameters())


def widen(model: SparseCompletionNet, channels) -> SparseCompletionNet:
    """The same function on a wider network: ``model`` grown to ``channels`` (each level at least as wide).

    Each weight is copied into the leading slice of the wider one; the weights from the new input channels into the
    old output channels are zero, and everything else new keeps the fresh network's initialisation. So the old
    channels compute exactly what they did (the new ones feed them nothing, the classifiers included), the output and
    every level's pruning are unchanged, and the new channels, whose own weights are random, get gradients and learn
    from there (a zero-initialised variant of Net2WiderNet, Chen et al. 2016). Training a wider network this way
    starts from the narrow one's score instead of from scratch."""
    wide = SparseCompletionNet(channels, skips=model.skips).to(next(model.parameters()).dtype)
    old, new = model.channels, wide.channels
    if any(n < o for o, n in zip(old, new)):
        raise ValueError(f"cannot widen channels {list(old)} to {list(new)}: every level must be at least as wide")
    state = wide.state_dict()
    for name, small in model.state_dict().items():
        big = state[name]
        if small.dim() == 0 or small.shape == big.shape:
            big.copy_(small)
        elif small.dim() == 1:  # a bias or a batch norm's parameter or statistic: the new channels keep their init
            big[: small.shape[0]] = small
        else:  # (kernel^3, C_in, C_out)
            _, c_in, c_out = small.shape
            big[:, :c_in, :c_out] = small
            big[:, c_in:, :c_out] = 0
    wide.load_state_dict(state)
    return wide


def completion_loss(out: CompletionOutput, new_point_weight: float = 1.0) -> torch.Tensor:
    """Binary cross-entropy of every decoder level's classifier against its ground truth, averaged over
    levels (the paper's loss). Levels that generated no points are skipped.

    ``new_point_weight``: the weight of the points that are not in the input at their level (the bone to add and
    the generated points to drop) against 1 for the input's own points, each level's mean taken over the weights.
    With skip connections most points of the fine levels are the input's, which the network learns to keep early;
    the default 1 is the paper's plain mean."""
    if new_point_weight <= 0:
        raise ValueError(f"new_point_weight must be positive; got {new_point_weight}")
    terms = []
    for level in out.levels:
        if level.target is None:
            raise ValueError("the loss needs the ground truth: call the network with target=...")
        if not level.logits.numel():
            continue
        target = level.target.to(level.logits.dtype)
        if new_point_weight == 1.0:
            terms.append(nn.functional.binary_cross_entropy_with_logits(level.logits, target))
        else:
            if level.given is None:
                raise ValueError("a new_point_weight needs the input's points: call the network with mark_given=True")
            weight = torch.where(level.given, 1.0, new_point_weight).to(level.logits.dtype)
            bce = nn.functional.binary_cross_entropy_with_logits(level.logits, target, reduction="none")
            terms.append((bce * weight).sum() / weight.sum())
    if not terms:
        raise ValueError("no decoder level generated any point: nothing to learn from")
    return torch.stack(terms).mean()


def layer_table(model: SparseCompletionNet) -> list[dict]:
    """The convolutions in order, as in the paper's Table 1 (batch norms counted with their layer)."""
    rows = []
    norms = {name.rsplit(".", 1)[0]: m for name, m in model.named_modules() if isinstance(m, SparseBatchNorm)}
    for name, m in model.named_modules():
        if isinstance(m, (SparseConv3d, SparseGenerativeConvTranspose3d)):
            norm = norms.get(name.rsplit(".", 1)[0])  # the batch norm beside it in its block, if any
            kind = "generative transposed conv" if isinstance(m, SparseGenerativeConvTranspose3d) else (
                "classifier" if name.startswith("classify") else ("strided conv" if m.stride == 2 else "conv")
            )
            params = sum(p.numel() for p in m.parameters()) + (sum(p.numel() for p in norm.parameters()) if norm is not None else 0)
            rows.append({"layer": name, "kind": kind, "kernel": m.kernel_size, "stride": m.stride, "in": m.in_channels, "out": m.out_channels, "params": params})

    def order(row):  # the encoder, then per decoder level: upsample, refine, classify
        head, _, rest = row["layer"].partition(".")
        group = {"encoder": 0, "up": 1, "refine": 2, "classify": 3}[head]
        index = int(rest.split(".")[0])
        return (0, index, 0) if group == 0 else (1, index, group)

    return sorted(rows, key=order)
