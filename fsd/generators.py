"""Generators as image sources, and a writer of their samples as PNG files.

A *generator* is any callable that maps a batch of latents to a batch of images: a ``torch.nn.Module``,
a function, a TorchScript model. `GeneratorSource` makes one a source for `fsd.compute` /
`fsd.compute_stats` (``fsd.compute(real, generator=G, z_dim=512, num_samples=10_000)`` builds it for
you), and `save_samples` writes its samples to a folder for the paper's folder workflow.

Latents, seeded: sample ``k`` depends only on ``(seed, k)``, never on the batch size, the number of
samples asked for, or the number of processes.

- ``z_dim=D``: standard normal, the paper's rule (as `fsd.invert.seeded_latents`): one stream
  ``numpy.random.RandomState(seed).standard_normal``, row ``k`` of ``D`` values is sample ``k``'s latent,
  float32. Without ``z_dim`` or ``z_sampler``, ``generator.z_dim`` is used when the generator has one.
- ``z_sampler(n, generator)``: your own distribution. It is called once per sample with ``n=1`` and a CPU
  ``torch.Generator`` seeded from ``(seed, k)``, and returns a tensor, a tuple of tensors or a dict of
  tensors, first dimension ``n``; per-sample results are concatenated along dimension 0 into a batch.

Calling (the hook for generators that need more than ``z``): latents that are a tensor are passed as
``G(z)``, a tuple as ``G(*latents)``, a dict as ``G(**latents)``. So a class-conditional generator gets its
labels from a ``z_sampler`` that returns ``(z, labels)``. Latents are moved to the generator's device
(``device=``, else that of its first parameter or buffer, else the CPU). ``G`` is called under
``torch.no_grad()`` and as it is: put it in eval mode yourself if it has batch norm or dropout.

Output: ``output_hook(output)`` (default: the output itself) must be a tensor ``(N, 3, H, W)``, one image
per latent. ``output_hook=lambda out: out[0]`` picks the images of a generator that returns a tuple,
``lambda out: out["image"]`` those of one that returns a dict, ``lambda x: x.permute(0, 3, 1, 2)`` fixes
channels-last output.

Quantization: outputs are quantized to uint8 by `fsd.preprocess.quantize`, the package's one rule:
``round((x - low) * 255 / (high - low))`` in float64, clipped to 0..255, for the declared
``value_range`` (``(-1, 1)`` by default, ``(0, 1)``, or ``None`` / ``"uint8"`` for uint8 output). NaN or
infinite values, and values far outside the declared range, are errors. The uint8 images then go through
the same resize and centre crop as image files (`fsd.preprocess.prepare_array`; nothing is done to images
already at the segmenter's size). Hence computing from ``G`` gives exactly the statistics of a folder of
``G``'s samples written by `save_samples` (PNG is lossless). The paper's code segments the float output
directly; quantizing is what makes the two workflows agree.

Under ``torch.distributed``, rank ``r`` of ``W`` makes the samples ``k`` with ``k % W == r`` (see
`fsd.distributed`).
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import itertools
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Union

import numpy as np
import torch
from PIL import Image

from ._io import atomic_write, prepare_output_folder
from .devices import resolve_device
from .errors import InputError
from . import preprocess
from .preprocess import prepare_array, quantize
from .segmenters.base import Preprocessing
from .sources import Batch

Latents = Union[torch.Tensor, tuple, dict]
ZSampler = Callable[[int, torch.Generator], Latents]
ValueRange = Union[tuple[float, float], str, None]

DEFAULT_VALUE_RANGE: tuple[float, float] = (-1.0, 1.0)
_MAX_SEED = 2**32 - 1  # numpy's RandomState takes seeds in [0, 2**32)


def parse_value_range(value_range: ValueRange) -> tuple[float, float] | None:
    """``(low, high)`` for float output, ``None`` for uint8 output (``None`` or ``"uint8"``)."""
    if value_range is None or (isinstance(value_range, str) and value_range.lower() == "uint8"):
        return None
    if isinstance(value_range, str):
        raise InputError(f"value_range {value_range!r} is not understood; use (-1, 1), (0, 1) or 'uint8'")
    return preprocess.parse_value_range(value_range)


def check_seed(seed: int) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed <= _MAX_SEED:
        raise InputError(f"the seed of a generator's latents must be an integer in [0, 2**32), got {seed!r}")
    return int(seed)


def images_to_uint8(images: object, value_range: tuple[float, float] | None, what: str, *,
                    in_update: bool = False) -> torch.Tensor:
    """Check a batch ``(N, 3, H, W)`` and quantize it to uint8 (on its own device). ``what`` names it in errors;
    ``in_update``: the batch came to `fsd.FSDMetric.update`, so hints speak of the images the caller passes
    (not of a generator's ``output_hook``, nor of a range set when the metric was made)."""
    if not isinstance(images, torch.Tensor):
        fix = ("pass a tensor (N, 3, H, W)" if in_update else
               "pass output_hook= to pick the images out of it, e.g. output_hook=lambda out: out[0] or "
               "lambda out: out['image']")
        raise InputError(f"{what} is a {type(images).__name__}, not a tensor of images; {fix}")
    if images.dim() != 4 or images.shape[1] != 3:
        hint = ""
        if images.dim() == 4 and images.shape[-1] == 3:
            hint = (" (it looks channels-last: images.permute(0, 3, 1, 2) fixes that)" if in_update else
                    " (it looks channels-last: output_hook=lambda x: x.permute(0, 3, 1, 2) fixes that)")
        raise InputError(f"{what} must have shape (N, 3, H, W), got {tuple(images.shape)}{hint}")
    if images.shape[2] < 1 or images.shape[3] < 1:
        raise InputError(f"{what} has empty images: shape {tuple(images.shape)}")
    if images.device.type == "mps":
        images = images.cpu()  # MPS has no float64, which the quantization rule uses
    remedy = None
    if in_update:
        made_for = "uint8 images" if value_range is None else f"images in [{value_range[0]:g}, {value_range[1]:g}]"
        remedy = (f"this metric was created for {made_for} (the range is a setting of FSDMetric(value_range=...), "
                  "not of update): pass images in that range, or uint8 images")
    try:
        return quantize(images.detach(), value_range, remedy)
    except InputError as exc:
        raise InputError(f"{what}: {exc}") from exc


def prepare_images(images: torch.Tensor, preprocessing: Preprocessing) -> torch.Tensor:
    """uint8 ``(N, 3, H, W)`` -> the segmenter's input ``(N, 3, S, S)``, by the same PIL resize and crop as
    files. Images already ``S x S`` are returned as they are, on their device."""
    if preprocessing.kind != "rgb":
        raise InputError(
            f"generated images are RGB, but this segmenter reads {preprocessing.kind!r} inputs; "
            "use an RGB segmenter such as the default 'upp'"
        )
    size = preprocessing.size
    if tuple(images.shape[2:]) == (size, size):
        return images
    hwc = images.cpu().permute(0, 2, 3, 1).numpy()
    return torch.from_numpy(np.stack([prepare_array(np.ascontiguousarray(im), preprocessing) for im in hwc]))


def derived_seed(*keys: int) -> int:
    """A 64-bit seed determined by ``keys`` alone (e.g. (seed, sample index)), via numpy's SeedSequence."""
    return int(np.random.SeedSequence(keys).generate_state(1, np.uint64)[0])


def check_batches(indices: Sequence[int], seed: int, batch_size: int) -> tuple[list[int], int]:
    """The arguments of a generator's ``latent_batches``, checked: ascending distinct sample indices >= 0, a
    valid seed, a batch size >= 1."""
    if batch_size < 1:
        raise InputError(f"batch_size must be at least 1, got {batch_size}")
    indices = list(indices)
    if indices != sorted(set(indices)) or (indices and indices[0] < 0):
        raise InputError("sample indices must be distinct, non-negative and ascending")
    return indices, check_seed(seed)


def _sample_seed(seed: int, index: int) -> int:
    return derived_seed(seed, index)


def _concat(parts: list) -> Latents:
    first = parts[0]
    if isinstance(first, torch.Tensor):
        return torch.cat(parts)
    if isinstance(first, tuple):
        return tuple(torch.cat([p[i] for p in parts]) for i in range(len(first)))
    return {key: torch.cat([p[key] for p in parts]) for key in first}


def _check_latents(value: object, n: int, what: str) -> Latents:
    if isinstance(value, list):
        value = tuple(value)
    if isinstance(value, torch.Tensor):
        items = [("", value)]
    elif isinstance(value, tuple) and value:
        items = [(f"[{i}]", v) for i, v in enumerate(value)]
    elif isinstance(value, dict) and value:
        items = [(f"[{k!r}]", v) for k, v in value.items()]
    else:
        raise InputError(f"{what} must return a tensor, a tuple or a dict of tensors; got {type(value).__name__}")
    for name, item in items:
        if not isinstance(item, torch.Tensor) or item.dim() == 0 or item.shape[0] != n:
            shape = tuple(item.shape) if isinstance(item, torch.Tensor) else type(item).__name__
            raise InputError(f"{what}{name} must be a tensor whose first dimension is n={n}; got {shape}")
    return value


def _move(latents: Latents, device: torch.device) -> Latents:
    if isinstance(latents, torch.Tensor):
        return latents.to(device)
    if isinstance(latents, tuple):
        return tuple(v.to(device) for v in latents)
    return {k: v.to(device) for k, v in latents.items()}


class _NormalStream:
    """Rows of ``RandomState(seed).standard_normal``, handed out for ascending sample indices."""

    def __init__(self, seed: int, z_dim: int):
        self.random = np.random.RandomState(seed)
        self.z_dim = z_dim
        self.position = 0

    def rows(self, indices: Sequence[int]) -> torch.Tensor:
        if indices[0] < self.position or list(indices) != sorted(indices):
            raise ValueError("latent rows must be asked for in ascending order")
        count = indices[-1] + 1 - self.position
        block = self.random.standard_normal(count * self.z_dim).reshape(count, self.z_dim)
        rows = block[[k - self.position for k in indices]]
        self.position = indices[-1] + 1
        return torch.from_numpy(rows).float()


def seeded_latents(n: int, seed: int, z_dim: int = 512) -> torch.Tensor:
    """``n`` latents ``(n, z_dim)`` float32, the paper's rule: row k does not depend on ``n``.

    ``numpy.random.RandomState(seed).standard_normal(n * z_dim)`` reshaped to ``(n, z_dim)``.
    """
    if n < 0 or z_dim < 1:
        raise InputError(f"need n >= 0 and z_dim >= 1, got n={n}, z_dim={z_dim}")
    return _NormalStream(seed, z_dim).rows(range(n)) if n else torch.zeros(0, z_dim)


@dataclass(frozen=True)
class GeneratorSource:
    """A generator as an image source (see the module docstring for every rule).

    >>> import torch
    >>> G = lambda z: torch.tanh(z[:, :3, None, None].expand(-1, 3, 8, 8))
    >>> source = GeneratorSource(G, num_samples=4, z_dim=16, seed=1)
    >>> source.images([0, 1, 2, 3]).dtype, source.images([2]).equal(source.images([0, 1, 2])[2:])
    (torch.uint8, True)

    ``num_samples`` and ``seed`` left ``None`` are taken from the run (``fsd.compute(..., num_samples=,
    seed=)``).
    """

    generator: Callable[..., object]
    num_samples: int | None = None
    z_dim: int | None = None
    z_sampler: ZSampler | None = None
    seed: int | None = None
    value_range: ValueRange = DEFAULT_VALUE_RANGE
    output_hook: Callable[[object], torch.Tensor] | None = None
    device: str | torch.device | None = None
    name: str | None = None

    def __post_init__(self) -> None:
        if not callable(self.generator):
            raise InputError(f"generator must be callable (latents -> images), got {type(self.generator).__name__}")
        if self.z_dim is not None and self.z_sampler is not None:
            raise InputError("pass z_dim (standard normal latents) or z_sampler (your own), not both")
        if self.z_dim is not None and (isinstance(self.z_dim, bool) or not isinstance(self.z_dim, int)
                                       or self.z_dim < 1):
            raise InputError(f"z_dim must be a positive integer, got {self.z_dim!r}")
        if self.z_sampler is not None and not callable(self.z_sampler):
            raise InputError("z_sampler must be a function (n, torch.Generator) -> latents")
        if self.output_hook is not None and not callable(self.output_hook):
            raise InputError("output_hook must be a function (generator output) -> images tensor")
        if self.num_samples is not None and (isinstance(self.num_samples, bool) or
                                             not isinstance(self.num_samples, int) or self.num_samples < 1):
            raise InputError(f"num_samples must be a positive integer, got {self.num_samples!r}")
        if self.seed is not None:
            check_seed(self.seed)
        parse_value_range(self.value_range)
        own = getattr(self.generator, "z_dim", None)
        if (self.z_dim is not None and isinstance(own, int) and not isinstance(own, bool) and own > 0
                and own != self.z_dim):
            raise InputError(
                f"z_dim={self.z_dim} was given, but {self._generator_name()} says its z_dim is {own}: leave z_dim "
                "out (--z-dim on the command line) to use the generator's own, or give the one it takes"
            )
        if self.z_sampler is None and self.resolved_z_dim is None:
            raise InputError(
                f"cannot tell the latent size of {self._generator_name()}: pass z_dim= (standard normal "
                "latents) or z_sampler= (your own), or give the generator a z_dim attribute"
            )

    # -- what it is ----------------------------------------------------------------------------
    @property
    def resolved_z_dim(self) -> int | None:
        if self.z_dim is not None:
            return self.z_dim
        z_dim = getattr(self.generator, "z_dim", None)
        return z_dim if isinstance(z_dim, int) and not isinstance(z_dim, bool) and z_dim > 0 else None

    @property
    def quantization_range(self) -> tuple[float, float] | None:
        return parse_value_range(self.value_range)

    def _generator_name(self) -> str:
        return self.name or f"generator {getattr(self.generator, '__name__', type(self.generator).__name__)}"

    def description(self, num_samples: int, seed: int) -> str:
        latents = f"z_dim {self.resolved_z_dim}" if self.z_sampler is None else "z_sampler"
        return f"{self._generator_name()} ({num_samples} samples, seed {seed}, {latents})"

    def sample_count(self, requested: int | None) -> int:
        """The number of samples, from this source or the run's ``num_samples`` (they must agree)."""
        if self.num_samples is not None and requested is not None and requested != self.num_samples:
            raise InputError(
                f"the GeneratorSource says num_samples={self.num_samples} but the run asks for {requested}; "
                "set one of them"
            )
        count = self.num_samples if self.num_samples is not None else requested
        if count is None:
            raise InputError("how many samples? pass num_samples= / --num-samples (the paper uses 10,000)")
        return count

    def sample_seed(self, run_seed: int) -> int:
        return check_seed(self.seed if self.seed is not None else run_seed)

    def generator_device(self) -> torch.device:
        if self.device is not None:
            return torch.device(self.device)
        if isinstance(self.generator, torch.nn.Module):
            tensor = next(itertools.chain(self.generator.parameters(), self.generator.buffers()), None)
            if tensor is not None:
                return tensor.device
        return torch.device("cpu")

    # -- making images -------------------------------------------------------------------------
    def latent_batches(self, indices: Sequence[int], seed: int, batch_size: int) -> Iterator[tuple[list[int], Latents]]:
        """``(sample indices, latents)`` for ascending ``indices``, ``batch_size`` at a time (on the CPU)."""
        indices, seed = check_batches(indices, seed, batch_size)
        stream = _NormalStream(seed, self.resolved_z_dim) if self.z_sampler is None else None
        for start in range(0, len(indices), batch_size):
            chunk = indices[start : start + batch_size]
            if stream is not None:
                yield chunk, stream.rows(chunk)
                continue
            parts = []
            for k in chunk:
                rng = torch.Generator().manual_seed(_sample_seed(seed, k))
                parts.append(_check_latents(self.z_sampler(1, rng), 1, "z_sampler(1, generator)"))
            yield chunk, _concat(parts)

    def render(self, latents: Latents) -> torch.Tensor:
        """The generator's images for a batch of latents, quantized to uint8 ``(N, 3, H, W)`` on its device."""
        n = _batch_length(latents)
        latents = _move(latents, self.generator_device())
        with torch.no_grad():
            try:
                if isinstance(latents, torch.Tensor):
                    output = self.generator(latents)
                elif isinstance(latents, tuple):
                    output = self.generator(*latents)
                else:
                    output = self.generator(**latents)
            except (TypeError, RuntimeError) as exc:
                hint = self._call_hint(exc, latents)
                if hint is None:
                    raise
                raise InputError(f"{self._generator_name()} failed on its latents ({type(exc).__name__}: {exc}); "
                                 f"{hint}") from exc
            if self.output_hook is not None:
                output = self.output_hook(output)
        what = f"the output of {self._generator_name()}" + (" after output_hook" if self.output_hook else "")
        images = images_to_uint8(output, self.quantization_range, what)
        if images.shape[0] != n:
            raise InputError(f"{what} holds {images.shape[0]} images for {n} latents; it must give one per latent")
        return images

    def _call_hint(self, exc: Exception, latents: Latents) -> str | None:
        """What to give when calling the generator failed in a way the latents explain, else None."""
        text = str(exc)
        if isinstance(exc, TypeError) and ("positional argument" in text or "required" in text):
            if self.z_sampler is None:
                return ("it takes more than one latent tensor (class labels, say): pass z_sampler= returning a "
                        "tuple (positional) or dict (keyword) of its arguments, see fsd.generators (on the command "
                        "line, name with --generator a function of z alone that draws the rest itself)")
            return "the latents z_sampler= returns do not match the generator's arguments"
        shape_error = any(k in text for k in ("shapes cannot be multiplied", "size mismatch", "must match the size",
                                              "Expected size", "expected input"))
        if isinstance(exc, RuntimeError) and shape_error and self.z_sampler is None:
            return (f"it was given standard normal latents of shape {tuple(latents.shape)}; if its latent size is "
                    f"not {self.resolved_z_dim}, give the right one with z_dim= (--z-dim on the command line)")
        return None

    def images(self, indices: Sequence[int], seed: int | None = None, batch_size: int = 32) -> torch.Tensor:
        """The uint8 samples ``indices`` (ascending), at the generator's resolution, on the CPU."""
        seed = self.sample_seed(1 if seed is None else seed)
        rendered = [self.render(z).cpu() for _, z in self.latent_batches(indices, seed, batch_size)]
        return torch.cat(rendered) if rendered else torch.zeros((0, 3, 0, 0), dtype=torch.uint8)

    def batches(self, indices: Sequence[int], preprocessing: Preprocessing, *, batch_size: int,
                seed: int) -> Iterator[Batch]:
        """Preprocessed uint8 batches of the samples ``indices`` (ascending), identified ``generator[k]``."""
        for chunk, latents in self.latent_batches(indices, seed, batch_size):
            yield Batch(prepare_images(self.render(latents), preprocessing), [f"generator[{k}]" for k in chunk],
                        list(chunk))


def _batch_length(latents: Latents) -> int:
    if isinstance(latents, torch.Tensor):
        return latents.shape[0]
    first = latents[0] if isinstance(latents, tuple) else next(iter(latents.values()))
    return first.shape[0]


def as_generator_source(
    generator: Callable[..., object] | GeneratorSource,
    *,
    z_dim: int | None = None,
    z_sampler: ZSampler | None = None,
    value_range: ValueRange = DEFAULT_VALUE_RANGE,
    output_hook: Callable[[object], torch.Tensor] | None = None,
    prompts: Sequence[str] | None = None,
    pipeline_kwargs: dict | None = None,
    name: str | None = None,
) -> GeneratorSource:
    """A `GeneratorSource` from a generator and its options (a `fsd.diffusers.PipelineSource` for a diffusers
    pipeline, with ``prompts`` and ``pipeline_kwargs``), or the given `GeneratorSource` unchanged."""
    from .diffusers import PipelineSource, is_pipeline

    if is_pipeline(generator):
        # diffusers' float images are in [0, 1]; the latent generators' default (-1, 1) does not apply
        pipe_range = PipelineSource.value_range if value_range == DEFAULT_VALUE_RANGE else value_range
        return PipelineSource(generator, z_dim=z_dim, z_sampler=z_sampler, output_hook=output_hook,
                              value_range=pipe_range, prompts=prompts, pipeline_kwargs=pipeline_kwargs or {}, name=name)
    if isinstance(generator, GeneratorSource):
        set_here = [name for name, value, default in (
            ("z_dim", z_dim, None), ("z_sampler", z_sampler, None), ("output_hook", output_hook, None),
            ("prompts", prompts, None), ("pipeline_kwargs", pipeline_kwargs, None),
        ) if value is not default]
        if value_range != DEFAULT_VALUE_RANGE:
            set_here.append("value_range")
        if set_here:
            raise InputError(f"set {', '.join(set_here)} on the GeneratorSource itself, not next to it")
        return generator
    given = [n for n, v in (("prompts", prompts), ("pipeline_kwargs", pipeline_kwargs)) if v is not None]
    if given:
        raise InputError(f"{', '.join(given)} apply to diffusers pipelines; {type(generator).__name__} is not one")
    return GeneratorSource(generator, z_dim=z_dim, z_sampler=z_sampler, value_range=value_range,
                           output_hook=output_hook, name=name)


def sample_file_name(index: int, num_samples: int) -> str:
    """``000042.png``: zero-padded to 6 digits, or more when ``num_samples`` needs them."""
    width = max(6, len(str(num_samples - 1)))
    return f"{index:0{width}d}.png"


def save_samples(
    generator: Callable[..., object] | GeneratorSource,
    folder: str | os.PathLike,
    *,
    num_samples: int | None = None,
    seed: int = 1,
    z_dim: int | None = None,
    z_sampler: ZSampler | None = None,
    value_range: ValueRange = DEFAULT_VALUE_RANGE,
    output_hook: Callable[[object], torch.Tensor] | None = None,
    prompts: Sequence[str] | None = None,
    pipeline_kwargs: dict | None = None,
    batch_size: int = 32,
    overwrite: bool = False,
    progress: bool = True,
    distributed: bool | None = None,
) -> list[Path]:
    """Write ``num_samples`` samples of a generator to ``folder`` as PNG files; return their paths.

    Sample ``k`` is written to ``folder/<k>.png`` (`sample_file_name`: ``000000.png``, ``000001.png``, ...)
    at the generator's own resolution, as the exact uint8 values `fsd.compute` segments, so
    ``fsd.compute_stats(folder)`` equals ``fsd.compute_stats(generator=...)`` with the same seed. Each file
    is written under a temporary name and renamed, so an interrupted run leaves only complete files.
    A folder that already holds files is refused unless ``overwrite=True`` (files of the same names are
    then replaced, others left alone). Under ``torch.distributed`` every rank writes its own samples
    (``k % world_size == rank``) and every rank gets all the paths.

    A diffusers pipeline (`fsd.diffusers`) takes ``prompts`` and ``pipeline_kwargs``; with prompts, the
    folder also gets ``prompts.jsonl``, one line per sample naming its file and its prompt.

    >>> fsd.save_samples(G, "samples/", num_samples=10_000, z_dim=512)  # doctest: +SKIP
    """
    from .distributed import current_world, run_on_all_ranks

    source = as_generator_source(generator, z_dim=z_dim, z_sampler=z_sampler, value_range=value_range,
                                 output_hook=output_hook, prompts=prompts, pipeline_kwargs=pipeline_kwargs)
    count = source.sample_count(num_samples)
    seed = source.sample_seed(seed)
    folder = Path(folder)
    world = current_world(distributed)
    paths = [folder / sample_file_name(k, count) for k in range(count)]

    def check_folder() -> None:
        prepare_output_folder(folder, overwrite=overwrite, option="output folder")

    def write() -> None:
        mine = world.shard(range(count))
        from tqdm.auto import tqdm

        with tqdm(total=len(mine), desc=f"sampling to {folder}", unit="img", file=sys.stderr,
                  disable=not (progress and world.is_main), leave=False) as bar:
            for chunk, latents in source.latent_batches(mine, seed, batch_size):
                images = source.render(latents).cpu().permute(0, 2, 3, 1).numpy()
                for k, image in zip(chunk, images):
                    _write_png(image, paths[k])
                bar.update(len(chunk))

    run_on_all_ranks(world, check_folder)
    run_on_all_ranks(world, write)
    if getattr(source, "prompts", None) is not None and world.is_main:
        source.write_prompts(folder, range(count), lambda k: paths[k].name)
    return paths


def _write_png(image: np.ndarray, path: Path) -> None:
    atomic_write(path, lambda handle: Image.fromarray(np.ascontiguousarray(image), mode="RGB").save(handle, format="PNG"))


# -- naming a generator on the command line ------------------------------------------------------------
TORCHSCRIPT_SUFFIXES = (".pt", ".pth", ".ts", ".jit", ".torchscript")
# ``FAMILY:NAME`` -> the loader of a published generator, named like a ``MODULE:NAME`` spec. fsd.invert builds on
# this module, so its loaders are named here, not imported: the imports run one way, fsd.invert -> fsd.generators.
PUBLISHED_GENERATORS = {"proggan": "fsd.invert.weights:proggan"}


def _import_attribute(path: str) -> Callable[..., object]:
    module_name, _, attribute = path.partition(":")
    return getattr(importlib.import_module(module_name), attribute)


def load_generator(
    spec: str,
    *,
    device: str | torch.device | None = None,
    weights_dir: str | os.PathLike | None = None,
    progress: bool = True,
) -> Callable[..., object]:
    """A generator named by a string, as the CLI's ``--generator`` / ``fsd sample GENERATOR`` take it.

    - ``proggan:NAME``: a published Progressive GAN (`fsd.invert.proggan`; ``z_dim`` 512, output in [-1, 1]).
    - ``diffusers:PATH``: a ``diffusers.DiffusionPipeline`` saved with ``save_pretrained`` (`fsd.diffusers`).
    - ``MODULE:NAME`` or ``path/to/file.py:NAME``: an ``nn.Module`` instance or a function of the latents
      is the generator; a class, or a function that takes no arguments, is called to build it.
      ``MODULE`` is imported with the current folder on ``sys.path``.
    - ``model.pt2``: a ``torch.export`` program (export it with a dynamic batch dimension).
    - ``model.pt`` (``.pt``, ``.pth``, ``.ts``, ``.jit``, ``.torchscript``): a TorchScript model.

    Modules are moved to ``device`` and put in eval mode (exported programs cannot switch modes: export
    the generator in eval mode).
    """
    if device is not None:
        device = resolve_device(device)
    if spec.startswith("diffusers:"):
        from .diffusers import load_pipeline

        return load_pipeline(spec.split(":", 1)[1], device=device, progress=progress)
    family, _, name = spec.partition(":")
    if family in PUBLISHED_GENERATORS:
        loader = _import_attribute(PUBLISHED_GENERATORS[family])
        generator = loader(name, weights_dir=weights_dir, device=device, progress=progress)
    elif Path(spec).is_file() and spec.lower().endswith(".pt2"):
        try:
            generator = torch.export.load(spec).module()
        except Exception as exc:
            raise InputError(f"cannot load {spec} as a torch.export program ({type(exc).__name__}: {exc})") from exc
        return generator.to(device) if device is not None else generator
    elif Path(spec).is_file() and spec.lower().endswith(TORCHSCRIPT_SUFFIXES):
        try:
            generator = torch.jit.load(spec, map_location=device)
        except Exception as exc:
            raise InputError(
                f"cannot load {spec} as a TorchScript model ({type(exc).__name__}: {exc}); save your generator "
                "with torch.jit.script(G).save(path), or name a Python factory as MODULE:NAME"
            ) from exc
    elif ":" in spec:
        generator = _import_generator(spec)
    else:
        raise InputError(
            f"cannot tell which generator {spec!r} names: use proggan:NAME, MODULE:NAME, path/to/file.py:NAME "
            "or a TorchScript file"
        )
    if isinstance(generator, torch.nn.Module):
        if device is not None:
            generator = generator.to(device)
        generator.eval()
    return generator


def _import_generator(spec: str) -> Callable[..., object]:
    module_name, _, attribute = spec.rpartition(":")
    try:
        if module_name.endswith(".py"):
            path = Path(module_name)
            if not path.is_file():
                raise InputError(f"{path}: no such Python file (from generator {spec!r})")
            module_spec = importlib.util.spec_from_file_location(f"_fsd_generator_{path.stem}", path)
            module = importlib.util.module_from_spec(module_spec)
            module_spec.loader.exec_module(module)
        else:
            if os.getcwd() not in sys.path:
                sys.path.insert(0, os.getcwd())
            module = importlib.import_module(module_name)
    except InputError:
        raise
    except Exception as exc:
        raise InputError(f"cannot import {module_name} for generator {spec!r}: {type(exc).__name__}: {exc}") from exc
    obj = module
    for part in attribute.split("."):
        if not hasattr(obj, part):
            raise InputError(f"{module_name} has no attribute {attribute!r} (from generator {spec!r})")
        obj = getattr(obj, part)
    if isinstance(obj, torch.nn.Module):
        return obj
    if not callable(obj):
        raise InputError(f"{spec} is a {type(obj).__name__}, not a generator or a function that builds one")
    if inspect.isclass(obj) or _takes_no_arguments(obj):
        built = obj()
        if not callable(built):
            raise InputError(f"{spec}() returned a {type(built).__name__}, not a generator")
        return built
    return obj


def _takes_no_arguments(function: Callable) -> bool:
    try:
        signature = inspect.signature(function)
    except (TypeError, ValueError):
        return False
    return all(p.default is not p.empty or p.kind is p.VAR_KEYWORD for p in signature.parameters.values())
