"""Cut a generator in two at a named layer: G = tail(head(z)), with offsets at named layers.

Layer inversion needs r, the output of one intermediate layer, as a function of z and of offsets
added to the outputs of earlier layers, and the rest of the generator as a function of r. This
module gives that for any generator without changing its code:

- ``head`` runs the generator's own ``forward`` with forward hooks on the named submodules: the
  hooks add the offsets and, at the split layer, keep its output and stop the run there.
- ``tail`` runs the children after the split layer when the generator is an ``nn.Sequential``
  and the split layer is one of its children; otherwise it runs the whole generator again with
  a hook that replaces the split layer's output by r (the layers before it still run, so ``tail``
  then needs the latents too).

Layer names are those of ``generator.named_modules()``, e.g. ``"layer4"`` or ``"body.block3"``.

Example::

    >>> import torch
    >>> from fsd.invert.proggan import ProGAN
    >>> g = ProGAN([8, 8, 8, 8, 4, 4], z_dim=8).eval()
    >>> split = SplitGenerator(g, PROGGAN_SPLIT)
    >>> z = torch.randn(2, 8)
    >>> r = split.head(z)
    >>> r.shape, torch.allclose(split.tail(r), g(z))
    (torch.Size([2, 8, 8, 8]), True)
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn

from fsd.errors import InputError

__all__ = ["LayerSplit", "PROGGAN_SPLIT", "SplitGenerator"]


@dataclass(frozen=True)
class LayerSplit:
    """Where to cut a generator, and where offsets are added.

    ``split_after``: the layer whose output is the representation r.
    ``offset_layers``: layers whose outputs get an additive offset before the next layer sees them,
    in the order they run; each must run before ``split_after`` (or be it).
    """

    split_after: str
    offset_layers: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.split_after:
            raise InputError("LayerSplit.split_after must name a layer, got an empty string")
        if len(set(self.offset_layers)) != len(self.offset_layers):
            raise InputError(f"LayerSplit.offset_layers repeats a layer: {self.offset_layers}")


# The paper's Progressive GAN setup: r = layer4 output, offsets d1, d2, d3 after layer1..layer3.
PROGGAN_SPLIT = LayerSplit("layer4", ("layer1", "layer2", "layer3"))


class _ReachedSplit(Exception):
    """Raised by the split layer's hook to end a head-only forward pass early."""


@dataclass
class SplitGenerator:
    """A generator seen as ``tail(head(z, offsets))``; see the module docstring.

    ``generator`` is used as is (not copied, not put in eval mode); freezing it is the caller's job.
    """

    generator: nn.Module
    split: LayerSplit
    _modules: dict[str, nn.Module] = field(init=False, repr=False)
    _tail_children: nn.Sequential | None = field(init=False, repr=False)

    def __post_init__(self) -> None:
        modules = dict(self.generator.named_modules())
        unknown = [
            name for name in (self.split.split_after, *self.split.offset_layers) if name not in modules
        ]
        if unknown:
            known = ", ".join(name for name in modules if name) or "(none)"
            raise InputError(
                f"the generator has no layer named {', '.join(map(repr, unknown))}; "
                f"its layers are: {known}"
            )
        self._modules = {
            name: modules[name] for name in (self.split.split_after, *self.split.offset_layers)
        }
        self._tail_children = None
        if isinstance(self.generator, nn.Sequential):
            names = [name for name, _ in self.generator.named_children()]
            if self.split.split_after in names:
                position = names.index(self.split.split_after)
                late = [
                    name
                    for name in self.split.offset_layers
                    if name in names and names.index(name) > position
                ]
                if late:
                    raise InputError(
                        f"offset layers {late} run after the split layer "
                        f"{self.split.split_after!r}; offsets must come before the split"
                    )
                self._tail_children = nn.Sequential(*list(self.generator.children())[position + 1 :])

    @property
    def tail_needs_latents(self) -> bool:
        """True when ``tail`` must rerun the generator from z (the split is not a Sequential child)."""
        return self._tail_children is None

    def head(self, z: torch.Tensor, offsets: Sequence[torch.Tensor] | None = None) -> torch.Tensor:
        """The split layer's output r for latents ``z``, with ``offsets`` added after the offset layers.

        ``offsets`` follow ``split.offset_layers`` and each has the shape of its layer's output
        (see `offset_shapes`); ``None`` means no offsets.
        """
        captured: dict[str, torch.Tensor] = {}
        with self._hooks(offsets, captured, stop_at_split=True, replace_split=None):
            try:
                self.generator(z)
            except _ReachedSplit:
                pass
        if "r" not in captured:
            raise InputError(
                f"layer {self.split.split_after!r} never ran in the generator's forward pass"
            )
        return captured["r"]

    def tail(self, r: torch.Tensor, z: torch.Tensor | None = None) -> torch.Tensor:
        """The generator's output with the split layer's output replaced by ``r``.

        ``z`` is needed only when `tail_needs_latents` (the layers before the split rerun).
        """
        if self._tail_children is not None:
            return self._tail_children(r)
        if z is None:
            raise InputError(
                f"the split layer {self.split.split_after!r} is not a child of an nn.Sequential "
                "generator, so tail(r, z) reruns the generator and needs the latents z"
            )
        with self._hooks(None, {}, stop_at_split=False, replace_split=r):
            return self.generator(z)

    def forward(
        self, z: torch.Tensor, offsets: Sequence[torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(r, image)`` in one pass: r as `head` gives it, and the generator's output from r."""
        if self._tail_children is not None:
            r = self.head(z, offsets)
            return r, self._tail_children(r)
        captured: dict[str, torch.Tensor] = {}
        with self._hooks(offsets, captured, stop_at_split=False, replace_split=None):
            image = self.generator(z)
        return captured["r"], image

    __call__ = forward

    def offset_shapes(self, z: torch.Tensor) -> list[torch.Size]:
        """Shapes of the offset layers' outputs for latents ``z`` (batch dimension included)."""
        return [output.shape for output in self._probe(z)]

    def zero_offsets(self, z: torch.Tensor) -> list[torch.Tensor]:
        """Zero offsets, one per offset layer, shaped, typed and placed like the layers' outputs."""
        return [torch.zeros_like(output) for output in self._probe(z)]

    def _probe(self, z: torch.Tensor) -> list[torch.Tensor]:
        """Outputs of the offset layers for ``z`` (run without gradients, up to the split)."""
        outputs: dict[str, torch.Tensor] = {}
        handles = [
            self._modules[name].register_forward_hook(_output_recorder(name, outputs))
            for name in self.split.offset_layers
        ]
        try:
            with torch.no_grad():
                self.head(z)
        finally:
            for handle in handles:
                handle.remove()
        return [outputs[name] for name in self.split.offset_layers]

    @contextmanager
    def _hooks(
        self,
        offsets: Sequence[torch.Tensor] | None,
        captured: dict[str, torch.Tensor],
        *,
        stop_at_split: bool,
        replace_split: torch.Tensor | None,
    ) -> Iterator[None]:
        layer_names = self.split.offset_layers
        if offsets is not None and len(offsets) != len(layer_names):
            raise InputError(
                f"got {len(offsets)} offsets for {len(layer_names)} offset layers {layer_names}"
            )
        by_layer = dict(zip(layer_names, offsets)) if offsets is not None else {}
        fired: set[str] = set()
        split_name = self.split.split_after

        def hook_for(name: str):
            def hook(module: nn.Module, inputs: object, output: torch.Tensor) -> torch.Tensor:
                if name in fired:
                    raise InputError(
                        f"layer {name!r} runs more than once in the generator's forward pass, "
                        "so it cannot be a split or offset point; name a layer that runs once"
                    )
                fired.add(name)
                if name in by_layer:
                    offset = by_layer[name]
                    if offset.shape != output.shape:
                        raise InputError(
                            f"the offset for layer {name!r} has shape {tuple(offset.shape)}, "
                            f"but the layer's output has shape {tuple(output.shape)}"
                        )
                    output = output + offset
                if name == split_name:
                    not_yet = [n for n in layer_names if n not in fired]
                    if not_yet:
                        raise InputError(
                            f"offset layers {not_yet} have not run when the split layer "
                            f"{split_name!r} runs; offsets must come before the split"
                        )
                    if replace_split is not None:
                        if replace_split.shape != output.shape:
                            raise InputError(
                                f"r has shape {tuple(replace_split.shape)}, but layer "
                                f"{split_name!r} outputs {tuple(output.shape)}"
                            )
                        output = replace_split
                    captured["r"] = output
                    if stop_at_split:
                        raise _ReachedSplit
                return output

            return hook

        handles = [
            module.register_forward_hook(hook_for(name)) for name, module in self._modules.items()
        ]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()


def _output_recorder(name: str, outputs: dict[str, torch.Tensor]):
    def record(module: nn.Module, inputs: object, output: torch.Tensor) -> None:
        outputs.setdefault(name, output)

    return record
