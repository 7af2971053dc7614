"""diffusers pipelines as generators, with real tiny pipelines built here (random weights, no download):
a DDPMPipeline and a DDIMPipeline (UNet2DModel) and a text-to-image StableDiffusionPipeline (tiny CLIP text
encoder, tokenizer from a vocabulary written here, UNet2DConditionModel, AutoencoderKL)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from diffusers import (
    AutoencoderKL,
    DDIMPipeline,
    DDIMScheduler,
    DDPMPipeline,
    DDPMScheduler,
    DiffusionPipeline,
    StableDiffusionPipeline,
    UNet2DConditionModel,
    UNet2DModel,
)
from PIL import Image
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

import fsd
import fsd.cli
from fsd.diffusers import PipelineSource, is_pipeline
from fsd.errors import InputError
from fsd.generators import derived_seed
from tests.conftest import ColorSegmenter, write_folder

pytestmark = pytest.mark.usefixtures("one_thread")
RUN = dict(segmenter=ColorSegmenter(32), num_workers=0, progress=False)
STEPS = {"num_inference_steps": 2}
PROMPTS = ["a red church", "blue sky", "a green tree"]


def tiny_unet() -> UNet2DModel:
    torch.manual_seed(0)
    return UNet2DModel(sample_size=16, in_channels=3, out_channels=3, layers_per_block=1, block_out_channels=(8, 16),
                       down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
                       norm_num_groups=4)


def tiny_text_to_image(root) -> StableDiffusionPipeline:
    torch.manual_seed(0)
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for word in " ".join(PROMPTS).split():
        vocab[word + "</w>"] = len(vocab)
    for letter in "abcdefghijklmnopqrstuvwxyz":
        vocab[letter] = len(vocab)
        vocab[letter + "</w>"] = len(vocab)
    (root / "vocab.json").write_text(json.dumps(vocab))
    (root / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer(str(root / "vocab.json"), str(root / "merges.txt"), model_max_length=16)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(vocab), hidden_size=8, intermediate_size=16, num_attention_heads=2, num_hidden_layers=1,
        max_position_embeddings=16, bos_token_id=0, eos_token_id=1, pad_token_id=1))
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(8, 16),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=8, attention_head_dim=2, norm_num_groups=4)
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 16),
                        layers_per_block=1, down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, norm_num_groups=4, sample_size=16)
    return StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=DDIMScheduler(num_train_timesteps=50, clip_sample=False, steps_offset=1),
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)


class LatentsPipeline(DiffusionPipeline):
    """A pipeline that returns its latents in a dict instead of images."""

    def __init__(self, unet, scheduler):
        super().__init__()
        self.register_modules(unet=unet, scheduler=scheduler)

    def __call__(self, batch_size: int = 1, generator=None, output_type: str = "pt"):
        return {"latents": torch.zeros(batch_size, 4, 8, 8)}


@pytest.fixture(scope="module")
def pipes(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipes")
    ddpm = DDPMPipeline(unet=tiny_unet(), scheduler=DDPMScheduler(num_train_timesteps=50))
    ddim = DDIMPipeline(unet=tiny_unet(), scheduler=DDIMScheduler(num_train_timesteps=50))
    text = tiny_text_to_image(root)
    pipes = {"root": root}
    for name, pipe in (("ddpm", ddpm), ("ddim", ddim), ("text", text)):
        pipe.save_pretrained(root / name)
        # what the command line loads (a hand-made tokenizer may not survive the round trip unchanged)
        pipes[name] = DiffusionPipeline.from_pretrained(root / name)
        pipes[name].set_progress_bar_config(disable=True)
    write_folder(root / "real", 6, seed=0)
    return pipes


def by_hand(pipe, seed: int, k: int, **call) -> np.ndarray:
    """Sample k written out independently: its own generator seeded from (seed, k), round(x * 255)."""
    out = pipe(generator=[torch.Generator().manual_seed(derived_seed(seed, k))], output_type="np", **call).images
    return (out[0].astype(np.float64) * 255).round().clip(0, 255).astype(np.uint8)


def test_unconditional_pipeline_equals_its_samples_saved_as_png(pipes, tmp_path):
    ddpm = pipes["ddpm"]
    assert is_pipeline(ddpm) and not is_pipeline(ColorSegmenter())
    result = fsd.compute(pipes["root"] / "real", generator=ddpm, num_samples=5, seed=4, pipeline_kwargs=STEPS,
                         batch_size=2, **RUN)
    assert "DDPMPipeline (5 samples, seed 4, num_inference_steps=2)" in result.fake.meta.source
    paths = fsd.save_samples(ddpm, tmp_path / "samples", num_samples=5, seed=4, pipeline_kwargs=STEPS,
                             batch_size=2, progress=False)
    assert not (tmp_path / "samples" / "prompts.jsonl").exists()  # unconditional: no prompts to record
    folder = fsd.compute(pipes["root"] / "real", tmp_path / "samples", **RUN)
    assert folder.fsd == result.fsd
    assert np.array_equal(folder.fake.count_outer_sum, result.fake.count_outer_sum)
    # the files hold the quantization rule applied to each sample's own seeded run
    assert np.array_equal(np.asarray(Image.open(paths[3])), by_hand(ddpm, 4, 3, batch_size=1, **STEPS))


def test_sample_k_depends_only_on_seed_and_k(pipes):
    source = PipelineSource(pipes["ddim"], pipeline_kwargs={**STEPS, "eta": 0.5})
    alone = source.images([3], seed=7, batch_size=1)
    one_at_a_time = source.images(range(5), seed=7, batch_size=1)
    assert torch.equal(alone[0], one_at_a_time[3])
    assert not torch.equal(one_at_a_time[0], one_at_a_time[1])
    assert not torch.equal(source.images([3], seed=8, batch_size=1)[0], alone[0])
    # In one batch of 5 the noise is the same (one generator per sample); the network's float arithmetic
    # may differ in its last bits between batch sizes, which moves a pixel by one level at most.
    batched = source.images(range(5), seed=7, batch_size=5)
    assert (batched.int() - one_at_a_time.int()).abs().max() <= 1
    assert (batched != one_at_a_time).float().mean() < 0.01


def test_text_to_image_prompts_cycle_and_are_recorded(pipes, tmp_path):
    text = pipes["text"]
    call = {**STEPS, "guidance_scale": 3.0}
    source = PipelineSource(text, prompts=PROMPTS, pipeline_kwargs=call)
    assert [source.prompt(k) for k in range(5)] == PROMPTS + PROMPTS[:2]
    paths = fsd.save_samples(text, tmp_path / "t2i", num_samples=5, seed=2, prompts=PROMPTS, pipeline_kwargs=call,
                             batch_size=2, progress=False)
    lines = [json.loads(line) for line in (tmp_path / "t2i" / "prompts.jsonl").read_text().splitlines()]
    assert lines == [{"file": p.name, "index": k, "prompt": PROMPTS[k % 3]} for k, p in enumerate(paths)]
    assert np.array_equal(np.asarray(Image.open(paths[4])),
                          by_hand(text, 2, 4, prompt=[PROMPTS[1]], **call))
    result = fsd.compute(pipes["root"] / "real", generator=text, num_samples=5, seed=2, prompts=PROMPTS,
                         pipeline_kwargs=call, batch_size=3, **RUN)
    folder = fsd.compute(pipes["root"] / "real", tmp_path / "t2i", **RUN)  # prompts.jsonl is no image
    assert folder.fake.n == 5 and np.array_equal(folder.fake.count_outer_sum, result.fake.count_outer_sum)
    assert "3 prompts cycled" in result.fake.meta.source
    # the prompt and the pipeline's arguments reach the pipeline
    first = source.images([0], seed=2, batch_size=1)
    other_prompt = PipelineSource(text, prompts=PROMPTS[1:], pipeline_kwargs=call).images([0], seed=2)
    other_guidance = PipelineSource(text, prompts=PROMPTS, pipeline_kwargs={**STEPS, "guidance_scale": 6.0})
    assert not torch.equal(first, other_prompt) and not torch.equal(first, other_guidance.images([0], seed=2))


def test_cli_takes_a_saved_pipeline(pipes, tmp_path, monkeypatch):
    monkeypatch.setattr(fsd.cli, "_make_segmenter", lambda *args, **kwargs: ColorSegmenter(32))
    root, runner = pipes["root"], CliRunner()
    common = ["-n", "4", "--seed", "3", "--steps", "2", "--num-workers", "0", "-q", "--bootstrap", "0", "--json"]
    done = runner.invoke(fsd.cli.cli, [str(root / "real"), "--generator", f"diffusers:{root / 'ddpm'}", *common])
    assert done.exit_code == 0, done.output
    expected = fsd.compute(root / "real", generator=pipes["ddpm"], num_samples=4, seed=3, pipeline_kwargs=STEPS,
                           **RUN)
    assert json.loads(done.stdout)["fsd"] == expected.fsd
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red church\nblue sky\n", encoding="utf-8")
    t2i = ["--generator", f"diffusers:{root / 'text'}", "--prompts", str(prompts), "--guidance-scale", "3"]
    done = runner.invoke(fsd.cli.cli, [str(root / "real"), *t2i, *common])
    assert done.exit_code == 0, done.output
    expected = fsd.compute(root / "real", generator=pipes["text"], num_samples=4, seed=3, prompts=PROMPTS[:2],
                           pipeline_kwargs={**STEPS, "guidance_scale": 3.0}, **RUN)
    assert json.loads(done.stdout)["fsd"] == expected.fsd
    done = runner.invoke(fsd.cli.cli, ["sample", f"diffusers:{root / 'text'}", str(tmp_path / "out"), "-n", "3",
                                       "--seed", "3", "--steps", "2", "--guidance-scale", "3", "--prompts",
                                       str(prompts), "-q"])
    assert done.exit_code == 0, done.output
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["000000.png", "000001.png", "000002.png",
                                                                    "prompts.jsonl"]
    again = fsd.compute_stats(tmp_path / "out", **RUN)
    assert np.array_equal(again.count_outer_sum, fsd.compute_stats(
        generator=pipes["text"], num_samples=3, seed=3, prompts=PROMPTS[:2],
        pipeline_kwargs={**STEPS, "guidance_scale": 3.0}, **RUN).count_outer_sum)


def test_bad_pipeline_input_is_a_clear_error(pipes, tmp_path, monkeypatch):
    ddpm, text = pipes["ddpm"], pipes["text"]
    latents = LatentsPipeline(tiny_unet(), DDPMScheduler(num_train_timesteps=50))
    with pytest.raises(InputError, match="holding dict, not images"):
        fsd.compute_stats(generator=latents, num_samples=2, **RUN)
    with pytest.raises(InputError, match="unconditional pipeline.*leave out prompts"):
        fsd.compute_stats(generator=ddpm, num_samples=2, prompts=["a church"], **RUN)
    with pytest.raises(InputError, match="text-to-image pipeline: pass prompts="):
        fsd.compute_stats(generator=text, num_samples=2, **RUN)
    with pytest.raises(InputError, match="prompts is empty"):
        PipelineSource(text, prompts=[])
    with pytest.raises(InputError, match="takes no argument 'num_inference_step'"):
        PipelineSource(ddpm, pipeline_kwargs={"num_inference_step": 2})  # a typo is never ignored
    with pytest.raises(InputError, match="may not set generator"):
        PipelineSource(ddpm, pipeline_kwargs={"generator": None})
    with pytest.raises(InputError, match="z_dim applies to latent generators"):
        fsd.compute_stats(generator=ddpm, z_dim=8, num_samples=2, **RUN)
    with pytest.raises(InputError, match="apply to diffusers pipelines"):
        fsd.compute_stats(generator=lambda z: z, z_dim=3, num_samples=2, prompts=["a"], **RUN)
    # the command line: one line, exit 2
    monkeypatch.setattr(fsd.cli, "_make_segmenter", lambda *args, **kwargs: ColorSegmenter(32))
    empty, blank = tmp_path / "empty.txt", tmp_path / "blank.txt"
    empty.write_text("")
    blank.write_text("a church\n\nblue sky\n")
    base = [str(pipes["root"] / "real"), "--generator", f"diffusers:{pipes['root'] / 'text'}", "-n", "2", "-q"]
    for prompts, message in ((empty, "holds no prompts"), (blank, "line 2 is blank")):
        done = CliRunner().invoke(fsd.cli.cli, [*base, "--prompts", str(prompts)])
        assert done.exit_code == 2 and message in done.output and len(done.output.strip().splitlines()) == 1
    done = CliRunner().invoke(fsd.cli.cli, [*base[:1], "--generator", f"diffusers:{tmp_path / 'nothing'}", "-n", "2"])
    assert done.exit_code == 2 and "cannot load a diffusers pipeline" in done.output
    done = CliRunner().invoke(fsd.cli.cli, [*base[:1], "other", "--steps", "3"])
    assert done.exit_code == 2 and "apply to --generator diffusers:PATH" in done.output
