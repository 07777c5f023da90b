"""Per-sample LoRA: each sample of one UNet (or text-encoder) forward gets its own adapter stack.

Base layers run once for the whole batch; forward hooks on the adapted Linear/Conv2d modules add
`sum_i w_i * scale_i * B_i(A_i(x))` per sample. A stack's factors are concatenated along the rank
(weights and scales folded into B), so a stack of any depth costs one pair of matmuls:

    A_stack = cat(A_1, A_2, ...)                       # [R, in]
    B_stack = cat(w_1 s_1 B_1, w_2 s_2 B_2, ...)       # [out, R]

When every sample of a batch shares one stack the delta is two plain matmuls; otherwise factors
are zero-padded to the batch's largest rank and gathered per sample for two batched matmuls.
The second matmul accumulates into the layer's fresh output in place (`addmm_` / `baddbmm_`),
saving a separate add and its allocation per hooked layer. Nothing is written into the base
weights, so no state leaks between batches.

With `fuse_shared=True` a batch whose samples all share one stack runs on fused copies instead:
each adapted module's weight is swapped, for that batch only, for a new tensor
`W + B_stack A_stack` and the original tensor object is put back by `deactivate` (never an
in-place add and subtract, so nothing drifts). That trades one weight-sized matmul per adapted
module per batch for the hooks' per-forward cost: a win when forwards are dispatch-bound (small
models, GPUs, many steps), a loss when the fuse is as dear as the steps it saves (a large UNet on
a CPU at few steps). Mixed batches always use the hooks.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.hooks import RemovableHandle

from covergen.adapters.files import LoraWeights

# One entry of a stack: an adapter and the weight to apply it at.
StackItem = tuple[LoraWeights, float]


def stack_signature(stack: Sequence[StackItem]) -> tuple[tuple[str, str, float], ...]:
    """A hashable identity of a stack: names, content versions and weights."""
    return tuple((w.name, w.version, float(weight)) for w, weight in stack if weight != 0.0)


@dataclass
class _ModulePlan:
    """What one hooked module adds during the current forward."""

    down: torch.Tensor  # shared: [R, in(,kh,kw)]; per-sample Linear: [N, in, R] (A transposed);
    #                     per-sample Conv2d: [N, R, in, kh, kw]
    up: torch.Tensor  # shared: [out, R(,1,1)]; per-sample Linear: [N, R, out] (B transposed);
    #                   per-sample Conv2d: [N * out, R, 1, 1] (grouped-conv weight)
    shared: bool
    conv: nn.Conv2d | None


class PerSampleLora:
    """Hooks one model (UNet or text encoder) and applies per-sample adapter stacks to it."""

    def __init__(
        self, model: nn.Module, target: str, max_cached_stacks: int = 64, *, fuse_shared: bool = False
    ) -> None:
        self.model = model
        self.target = target  # "unet" or "text_encoder": the key into LoraWeights.factors
        self.fuse_shared = fuse_shared
        self._originals: dict[str, torch.Tensor] = {}  # module -> its own weight while a fused copy runs
        self._modules: dict[str, nn.Linear | nn.Conv2d] = {
            name: m for name, m in model.named_modules() if isinstance(m, nn.Linear | nn.Conv2d)
        }
        self._hooks: dict[str, RemovableHandle] = {}
        self._plans: dict[str, _ModulePlan] = {}
        self._active: tuple | None = None  # what the current plan (or fused copy) was built for
        self._stack_cache: OrderedDict[tuple, dict[str, tuple[torch.Tensor, torch.Tensor]]] = OrderedDict()
        self._max_cached = max_cached_stacks

    def module_names(self) -> list[str]:
        return list(self._modules)

    def check_compatible(self, weights: LoraWeights) -> str | None:
        """Why `weights` cannot apply to this model, or None when it fits."""
        for name, factor in weights.factors.get(self.target, {}).items():
            module = self._modules.get(name)
            if module is None:
                return f"{self.target} has no Linear/Conv2d module '{name}'"
            if isinstance(module, nn.Linear):
                expected_in, expected_out = module.in_features, module.out_features
            else:
                expected_in, expected_out = module.in_channels, module.out_channels
            if factor.down.shape[1] != expected_in or factor.up.shape[0] != expected_out:
                return (
                    f"{self.target}.{name} expects [{expected_out} x {expected_in}] but the adapter has "
                    f"down {list(factor.down.shape)} and up {list(factor.up.shape)}; "
                    "was it trained for another base model?"
                )
        return None

    def forget(self, name: str) -> None:
        """Drop cached stacks that include adapter `name` (it was evicted or replaced)."""
        for key in [k for k in self._stack_cache if any(item[0] == name for item in k)]:
            del self._stack_cache[key]

    # --- per batch -----------------------------------------------------------------------------

    def activate(self, stacks: Sequence[Sequence[StackItem]], rows: Sequence[int]) -> None:
        """Set the plan for the next forwards: sample `i` of the batch uses `stacks[rows[i]]`.

        Asking again for what is already active costs nothing (the step-level engine asks every
        time its running set changes): a shared stack's plan or fused copy does not depend on
        the batch size, a mixed plan does."""
        shared = len(set(rows)) == 1
        signatures = tuple(stack_signature(stacks[r]) for r in (rows[:1] if shared else rows))
        key = ("shared", signatures) if shared else ("mixed", signatures)
        if key == self._active:
            return
        self.deactivate()
        self._active = key
        merged = [self._merged(stack) for stack in stacks]
        module_names = {name for m in merged for name in m}
        if not module_names:
            return
        if shared and self.fuse_shared:
            self._fuse(merged[rows[0]])
            return
        row_index: torch.Tensor | None = None
        for name in module_names:
            module = self._modules[name]
            conv = module if isinstance(module, nn.Conv2d) else None
            if shared:
                factors = merged[rows[0]].get(name)
                if factors is None:
                    continue
                self._plans[name] = _ModulePlan(factors[0], factors[1], True, conv)
                continue
            downs, ups_t = _padded(merged, name)  # [K, R, in...], [K, R, out...]
            if row_index is None:
                row_index = torch.tensor(list(rows), dtype=torch.long, device=downs.device)
            down = downs.index_select(0, row_index)  # [N, R, in(,kh,kw)]
            up_t = ups_t.index_select(0, row_index)  # [N, R, out(,1,1)]
            if conv is None:  # bmm reads both factors transposed: lay A out that way once per batch
                self._plans[name] = _ModulePlan(down.transpose(1, 2).contiguous(), up_t, False, None)
            else:  # grouped-conv weight: [N, out, R, 1, 1] -> [N * out, R, 1, 1]
                up = up_t.transpose(1, 2).reshape(-1, up_t.shape[1], *up_t.shape[3:])
                self._plans[name] = _ModulePlan(down, up, False, conv)
        self._ensure_hooks(module_names)

    def deactivate(self) -> None:
        """Back to the base model: no plan, every fused weight swapped back for the original."""
        self._active = None
        self._plans.clear()
        for name, original in self._originals.items():
            self._modules[name].weight = original
        self._originals.clear()

    # --- internals -----------------------------------------------------------------------------

    def _merged(self, stack: Sequence[StackItem]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        key = stack_signature(stack)
        cached = self._stack_cache.get(key)
        if cached is not None:
            self._stack_cache.move_to_end(key)
            return cached
        per_module: dict[str, tuple[list[torch.Tensor], list[torch.Tensor]]] = {}
        for weights, weight in stack:
            factors = weights.factors.get(self.target, {})
            if weight == 0.0 or not factors:
                continue
            # one foreach call scales every module's B: a new stack costs few kernel launches
            scaled = torch._foreach_mul(
                [f.up for f in factors.values()], [weight * f.scale for f in factors.values()]
            )
            for (name, factor), up in zip(factors.items(), scaled, strict=True):
                downs, ups = per_module.setdefault(name, ([], []))
                downs.append(factor.down)
                ups.append(up)
        merged = {
            name: (d[0], u[0]) if len(d) == 1 else (torch.cat(d, dim=0), torch.cat(u, dim=1))
            for name, (d, u) in per_module.items()
        }
        self._stack_cache[key] = merged
        if len(self._stack_cache) > self._max_cached:
            self._stack_cache.popitem(last=False)
        return merged

    def _fuse(self, merged: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> None:
        for name, (down, up) in merged.items():
            module = self._modules[name]
            original = module.weight  # [out, in] or [out, in, kh, kw]
            if isinstance(module, nn.Conv2d):  # up [out, R, 1, 1] @ down [R, in, kh, kw]
                delta = (up.flatten(1) @ down.flatten(1)).view_as(original)
                fused = torch.empty_like(original, requires_grad=False)  # keeps channels_last
                torch.add(original.detach(), delta, out=fused)
            else:
                fused = torch.addmm(original.detach(), up, down)  # [out, in]
            self._originals[name] = original
            module.weight = nn.Parameter(fused, requires_grad=False)

    def hook_all(self) -> None:
        """Put a hook on every Linear/Conv2d now instead of on first use.

        For `torch.compile`: dynamo does not guard on hooks added after a module was compiled
        (`skip_nnmodule_hook_guards`), so a hook registered later would silently not run."""
        self._ensure_hooks(set(self._modules))

    def _ensure_hooks(self, names: set[str]) -> None:
        for name in names - self._hooks.keys():
            self._hooks[name] = self._modules[name].register_forward_hook(self._make_hook(name))

    def _make_hook(self, name: str):
        plans = self._plans

        def hook(
            module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor
        ) -> torch.Tensor | None:
            plan = plans.get(name)
            if plan is None:
                return None
            return _add_delta(plan, inputs[0], output)

        return hook


def _padded(
    merged: Sequence[dict[str, tuple[torch.Tensor, torch.Tensor]]], name: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """One module's factors for K stacks, zero-padded to the largest rank (zeros add nothing)."""
    present = next(m[name] for m in merged if name in m)
    downs, ups_t = [], []
    for m in merged:
        down, up = m[name] if name in m else (present[0][:0], present[1][:, :0])  # absent: rank 0
        downs.append(down)  # [R_k, in(,kh,kw)]
        ups_t.append(up.transpose(0, 1))  # [R_k, out(,1,1)]
    pad = torch.nn.utils.rnn.pad_sequence
    return pad(downs, batch_first=True), pad(ups_t, batch_first=True)  # [K, R, in...], [K, R, out...]


def _add_delta(plan: _ModulePlan, x: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
    """`output += delta(x)` in place; `output` is the layer's own fresh result.

    Conv outputs keep their memory format (a channels_last UNet gives channels_last outputs): the
    in-place adds work on any strides, and the grouped path reshapes rather than views."""
    if plan.conv is None:
        if not output.is_contiguous():  # never seen from Linear, but the views below need it
            output = output.contiguous()
        if plan.shared:
            h = F.linear(x, plan.down)  # [..., R]
            output.view(-1, output.shape[-1]).addmm_(h.view(-1, h.shape[-1]), plan.up.t())
            return output
        squeeze = x.dim() == 2
        h = x.unsqueeze(1) if squeeze else x  # [N, T, in]
        out = output.unsqueeze(1) if squeeze else output  # [N, T, out], a view of output
        h = torch.bmm(h, plan.down)  # [N, T, R] with down [N, in, R]
        out.baddbmm_(h, plan.up)  # up: [N, R, out]
        return output
    conv = plan.conv
    if plan.shared:
        h = F.conv2d(x, plan.down, stride=conv.stride, padding=conv.padding, dilation=conv.dilation)
        return output.add_(F.conv2d(h, plan.up))
    n = x.shape[0]  # grouped convolution: one group per sample
    rank = plan.down.shape[1]
    h = F.conv2d(
        x.reshape(1, -1, *x.shape[2:]),  # [1, N*in, H, W]
        plan.down.reshape(n * rank, *plan.down.shape[2:]),  # [N*R, in, kh, kw]
        stride=conv.stride,
        padding=conv.padding,
        dilation=conv.dilation,
        groups=n,
    )
    h = F.conv2d(h, plan.up, groups=n)  # [1, N*out, H', W'] with up [N*out, R, 1, 1]
    return output.add_(h.reshape(n, -1, *h.shape[2:]))
