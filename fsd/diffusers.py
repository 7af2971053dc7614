"""diffusers pipelines as generators (the ``diffusers`` extra).

``fsd.compute(real, generator=pipe, num_samples=N, seed=s)``, ``fsd.compute_stats(generator=pipe, ...)``,
``fsd.save_samples(pipe, folder, ...)`` and ``fsd REAL --generator diffusers:PATH -n N`` take a
``diffusers.DiffusionPipeline``:

- unconditional pipelines (DDPM, DDIM, ..., any whose ``__call__`` takes ``batch_size``), called as
  ``pipe(batch_size=B, generator=[...], output_type="pt", **pipeline_kwargs)``;
- text-to-image pipelines (any whose ``__call__`` takes ``prompt``), with ``prompts=``: a list, or
  ``--prompts FILE`` with one prompt a line. Sample ``k`` gets ``prompts[k % len(prompts)]`` (cycled),
  and `PipelineSource.prompt` says which; `fsd.save_samples` writes the mapping to ``prompts.jsonl``.
- ``pipeline_kwargs=`` (``--steps``, ``--guidance-scale``) are passed to every call: an argument the
  pipeline does not take is an error, never ignored.

Seeds: each sample gets its own CPU ``torch.Generator`` seeded from ``(seed, k)`` (the rule of
`fsd.generators` for ``z_sampler``), and pipelines draw batch noise per sample from such a list, so the
noise of sample ``k`` depends only on ``(seed, k)``: not on the batch size, the number of samples, the
number of processes, or the device (diffusers draws from CPU generators on the CPU). A network's float
arithmetic may still differ in its last bits between batch sizes (we saw 2e-7 on a tiny CPU UNet), so a
pixel can move by one uint8 level; tests/test_diffusers.py checks batch sizes 1 and 5 agree within one
level. With the same batch size, everything is bit for bit.

Output: the pipeline's images (``output.images``, or the first element of a tuple) as a tensor or array
in [0, 1] (``output_type="pt"`` or ``"np"``) or PIL images, quantized by the one rule of every generator
(`fsd.preprocess.quantize`), so ``fsd.compute(real, generator=pipe, ...)`` equals computing on the folder
``fsd.save_samples(pipe, ...)`` writes, bit for bit.

``import fsd`` does not import diffusers; this module imports it only to load a pipeline from a path.
"""

from __future__ import annotations

import inspect
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ._text import plural
from .errors import InputError
from .generators import (
    GeneratorSource,
    ValueRange,
    _sample_seed,
    check_batches,
    check_seed,
    images_to_uint8,
    parse_value_range,
)

PIPELINE_VALUE_RANGE: tuple[float, float] = (0.0, 1.0)  # diffusers' images for output_type "pt" and "np"
PROMPTS_FILE = "prompts.jsonl"
# Arguments fsd sets itself on every call, per sample.
_RESERVED = ("generator", "prompt", "batch_size", "num_images_per_prompt", "return_dict")


def is_pipeline(obj: object) -> bool:
    """Whether ``obj`` is a ``diffusers.DiffusionPipeline`` (checked without importing diffusers)."""
    return any(cls.__name__ == "DiffusionPipeline" and cls.__module__.split(".")[0] == "diffusers"
               for cls in type(obj).__mro__)


@dataclass(frozen=True)
class _Draw:
    """The samples of one call: their indices and per-sample seeds."""

    indices: list[int]
    seeds: list[int]


@dataclass(frozen=True)
class PipelineSource(GeneratorSource):
    """A diffusers pipeline as an image source (see the module docstring for every rule).

    ``prompts``: for a text-to-image pipeline, cycled over the samples. ``pipeline_kwargs``: passed to
    every call (``{"num_inference_steps": 50, "guidance_scale": 7.5}``). ``value_range``: of the
    pipeline's float output, ``(0, 1)`` as diffusers returns it.
    """

    value_range: ValueRange = PIPELINE_VALUE_RANGE
    prompts: tuple[str, ...] | None = None
    pipeline_kwargs: Mapping[str, object] = field(default_factory=dict)

    def __post_init__(self) -> None:
        pipe = self.generator
        if not is_pipeline(pipe):
            raise InputError(f"PipelineSource needs a diffusers.DiffusionPipeline, got {type(pipe).__name__}")
        for name in ("z_dim", "z_sampler", "output_hook"):
            if getattr(self, name) is not None:
                raise InputError(f"{name} applies to latent generators; a diffusers pipeline draws its own noise "
                                 "(pass pipeline_kwargs= to change how it is called)")
        if self.num_samples is not None and (isinstance(self.num_samples, bool) or
                                             not isinstance(self.num_samples, int) or self.num_samples < 1):
            raise InputError(f"num_samples must be a positive integer, got {self.num_samples!r}")
        if self.seed is not None:
            check_seed(self.seed)
        parameters = inspect.signature(pipe.__call__).parameters
        takes_any = any(p.kind is p.VAR_KEYWORD for p in parameters.values())
        name = self._generator_name()
        if self.prompts is not None:
            if isinstance(self.prompts, str) or not isinstance(self.prompts, Sequence):
                raise InputError(f"prompts must be a list of strings, got {type(self.prompts).__name__}")
            prompts = tuple(self.prompts)
            if not prompts:
                raise InputError("prompts is empty: give at least one prompt")
            bad = [i for i, p in enumerate(prompts) if not isinstance(p, str)]
            if bad:
                raise InputError(f"prompt {bad[0]} is a {type(prompts[bad[0]]).__name__}, not a string")
            object.__setattr__(self, "prompts", prompts)
            if "prompt" not in parameters:
                raise InputError(f"{name} is an unconditional pipeline (its __call__ takes no prompt): leave out "
                                 "prompts= (--prompts)")
        elif "prompt" in parameters:
            raise InputError(f"{name} is a text-to-image pipeline: pass prompts= (a list of prompts, cycled over the "
                             "samples; --prompts FILE on the command line, one prompt a line)")
        elif "batch_size" not in parameters:
            raise InputError(f"cannot tell how to call {name}: its __call__ takes neither prompt nor batch_size")
        if not isinstance(self.pipeline_kwargs, Mapping):
            raise InputError(f"pipeline_kwargs must be a dict, got {type(self.pipeline_kwargs).__name__}")
        object.__setattr__(self, "pipeline_kwargs", dict(self.pipeline_kwargs))
        reserved = [k for k in self.pipeline_kwargs if k in _RESERVED]
        if reserved:
            raise InputError(f"pipeline_kwargs may not set {', '.join(reserved)}: fsd sets them per sample "
                             "(prompts= for the prompts, seed= for the generators)")
        unknown = [k for k in self.pipeline_kwargs if k not in parameters and not takes_any]
        if unknown:
            raise InputError(f"{name} takes no argument {', '.join(map(repr, unknown))} (pipeline_kwargs); it takes "
                             f"{', '.join(p for p in parameters if p not in _RESERVED)}")
        parse_value_range(self.value_range)

    # -- what it is ----------------------------------------------------------------------------------
    @property
    def resolved_z_dim(self) -> int | None:
        return None

    def _generator_name(self) -> str:
        return self.name or f"pipeline {type(self.generator).__name__}"

    def prompt(self, index: int) -> str | None:
        """The prompt of sample ``index`` (None for an unconditional pipeline)."""
        return None if self.prompts is None else self.prompts[index % len(self.prompts)]

    def description(self, num_samples: int, seed: int) -> str:
        prompts = "" if self.prompts is None else f", {plural(len(self.prompts), 'prompt')} cycled"
        extra = "".join(f", {k}={v!r}" for k, v in sorted(self.pipeline_kwargs.items()))
        return f"{self._generator_name()} ({num_samples} samples, seed {seed}{prompts}{extra})"

    def generator_device(self) -> torch.device:
        return torch.device("cpu")  # the torch.Generators: diffusers draws from CPU generators on the CPU

    # -- making images -------------------------------------------------------------------------------
    def latent_batches(self, indices: Sequence[int], seed: int, batch_size: int):
        """``(sample indices, draw)`` for ascending ``indices``, ``batch_size`` at a time."""
        indices, seed = check_batches(indices, seed, batch_size)
        for start in range(0, len(indices), batch_size):
            chunk = indices[start : start + batch_size]
            yield chunk, _Draw(chunk, [_sample_seed(seed, k) for k in chunk])

    def render(self, draw: _Draw) -> torch.Tensor:
        """The pipeline's images for one draw, quantized to uint8 ``(N, 3, H, W)``."""
        call = {"output_type": "pt", **self.pipeline_kwargs}
        call["generator"] = [torch.Generator().manual_seed(s) for s in draw.seeds]
        if self.prompts is None:
            call["batch_size"] = len(draw.indices)
        else:
            call["prompt"] = [self.prompt(k) for k in draw.indices]
        with torch.no_grad():
            output = self.generator(**call)
        what = f"the output of {self._generator_name()}"
        images = images_to_uint8(_images_of(output, what), self.quantization_range, what)
        if images.shape[0] != len(draw.indices):
            raise InputError(f"{what} holds {images.shape[0]} images for {len(draw.indices)} samples; it must give one "
                             "per sample")
        return images

    def write_prompts(self, folder: Path, indices: Sequence[int], file_name) -> None:
        """``folder/prompts.jsonl``: one line per sample, ``{"file": ..., "index": k, "prompt": ...}``."""
        from ._io import atomic_write

        lines = [json.dumps({"file": file_name(k), "index": k, "prompt": self.prompt(k)}, ensure_ascii=False)
                 for k in indices]
        text = ("\n".join(lines) + "\n").encode("utf-8")
        atomic_write(folder / PROMPTS_FILE, lambda handle: handle.write(text))


def _images_of(output: object, what: str) -> torch.Tensor:
    """The images a pipeline returned, as a tensor ``(N, 3, H, W)`` (float, or uint8 from PIL images)."""
    images = getattr(output, "images", None)
    if images is None and isinstance(output, (tuple, list)) and output and not _is_pil(output[0]):
        images = output[0]
    elif images is None:
        images = output
    if isinstance(images, (list, tuple)) and images and all(_is_pil(im) for im in images):
        images = np.stack([np.asarray(im.convert("RGB")) for im in images])
    if isinstance(images, np.ndarray) and images.dtype != object:
        images = torch.from_numpy(np.ascontiguousarray(images))
    if not isinstance(images, torch.Tensor):
        raise InputError(f"{what} is a {type(output).__name__} holding {type(images).__name__}, not images: a pipeline "
                         "must return images (output.images, or the first element of a tuple) as a tensor, an array "
                         "or PIL images; check output_type in pipeline_kwargs")
    if images.dim() == 4 and images.shape[-1] == 3 and images.shape[1] != 3:
        images = images.permute(0, 3, 1, 2)  # "np" output is channels-last
    return images


def _is_pil(obj: object) -> bool:
    from PIL import Image

    return isinstance(obj, Image.Image)


def read_prompts(path: str | os.PathLike) -> list[str]:
    """The prompts of a text file, one a line (UTF-8). An empty file or a blank line is an `InputError`."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read prompts file {path}: {exc}") from exc
    lines = text.splitlines()
    if not any(line.strip() for line in lines):
        raise InputError(f"prompts file {path} holds no prompts: write one prompt a line")
    blank = [i + 1 for i, line in enumerate(lines) if not line.strip()]
    if blank:
        raise InputError(f"prompts file {path}: line {blank[0]} is blank; remove it (one prompt a line)")
    return lines


def load_pipeline(path: str, *, device: str | torch.device | None = None, progress: bool = True):
    """``diffusers.DiffusionPipeline.from_pretrained(path)`` (a folder made by ``save_pretrained``, or a Hub
    name), moved to ``device``; its per-call progress bars off, its loading bars only with ``progress``."""
    try:
        import diffusers
        from diffusers.utils import logging as diffusers_logging
    except ImportError as exc:
        raise InputError(f"--generator diffusers:PATH needs diffusers ({exc}): pip install "
                         "'pytorch-fsd[diffusers]'") from exc
    loggers = [diffusers_logging]
    try:  # text encoders load through transformers, which has its own bars
        from transformers.utils import logging as transformers_logging

        loggers.append(transformers_logging)
    except ImportError:
        pass
    turned_off = [] if progress else [log for log in loggers if log.is_progress_bar_enabled()]
    for log in turned_off:
        log.disable_progress_bar()
    try:
        pipe = diffusers.DiffusionPipeline.from_pretrained(path)
    except Exception as exc:
        raise InputError(f"cannot load a diffusers pipeline from {path} ({type(exc).__name__}: {exc}); give a folder "
                         "written by pipeline.save_pretrained()") from exc
    finally:
        for log in turned_off:
            log.enable_progress_bar()
    if device is not None:
        pipe = pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    return pipe
