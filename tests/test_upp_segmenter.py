from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fsd.errors import InputError, WeightsError
from fsd.segmenters.base import PAPER_PREPROCESSING, Segmenter, class_percentages
from fsd.segmenters.upernet import HeadSizes, ResNet50DeepStem, UPerNetDecoder, load_state_dict_checked
from fsd.devices import default_device
from fsd.segmenters.upp import UPPSegmenter, read_labels, validate_labels
from tests.synthetic import (
    DECODER_FILE,
    ENCODER_FILE,
    LABELS_FILE,
    synthetic_images,
    synthetic_labels,
    synthetic_upp_state_dicts,
    write_upp_weights,
)

# The full model costs about 1.3 s per image on a laptop CPU: every test below reuses the
# module-scoped model and the one batch of 8 images it segments.


@pytest.fixture(scope="module")
def weights_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("weights")
    write_upp_weights(root, seed=0)
    return root


@pytest.fixture(scope="module")
def segmenter(weights_root) -> UPPSegmenter:
    return UPPSegmenter.from_folder(weights_root / "upp-resnet50-upernet", device="cpu")


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return synthetic_images(8, 256, seed=11)


@pytest.fixture(scope="module")
def batch_run(segmenter, images):
    """Labels of the 8-image batch, and what the encoder received (micro-batch after micro-batch)."""
    seen: list[torch.Tensor] = []
    hook = segmenter.encoder.register_forward_pre_hook(lambda module, args: seen.append(args[0].clone()))
    try:
        labels = segmenter.segment(images)
    finally:
        hook.remove()
    return labels, torch.cat(seen)[: len(images)]


def test_label_maps(batch_run, segmenter):
    labels, _ = batch_run
    assert labels.shape == (8, 256, 256) and labels.dtype == torch.int64
    assert labels.device == segmenter.device == torch.device("cpu")
    assert int(labels.min()) >= 0 and int(labels.max()) < segmenter.num_classes == 336
    # The synthetic weights are built to give varied maps; end-to-end tests rely on it.
    assert all(len(torch.unique(labels[i])) > 5 for i in range(8))
    assert not torch.equal(labels[0], labels[1])


def test_class_percentages_rows_sum_to_100(batch_run, segmenter):
    percentages = class_percentages(batch_run[0], segmenter.num_classes)
    assert percentages.shape == (8, 336) and percentages.dtype == torch.float64
    torch.testing.assert_close(percentages.sum(1), torch.full((8,), 100.0, dtype=torch.float64))


def test_network_input_is_bgr_minus_means(batch_run, images):
    _, network_input = batch_run
    rgb = images.double()
    expected = torch.stack([rgb[:, 2] - 102.9801, rgb[:, 1] - 115.9465, rgb[:, 0] - 122.7717], dim=1)
    assert network_input.dtype == torch.float32
    torch.testing.assert_close(network_input.double(), expected, rtol=0, atol=1e-5)


def test_matches_naive_full_model_pipeline(segmenter, batch_run, images):
    # Float32 arithmetic, like the model: a 1-ulp change of the input can flip near-tied pixels.
    x = images[2:3].float()
    x = torch.stack([x[:, 2], x[:, 1], x[:, 0]], 1) - torch.tensor([102.9801, 115.9465, 122.7717]).view(1, 3, 1, 1)
    with torch.inference_mode():
        logits = segmenter.decoder(segmenter.encoder(x)).object
        scores = F.interpolate(logits, size=(256, 256), mode="bilinear", align_corners=False)
    assert torch.equal(batch_run[0][2], scores.argmax(1)[0])


def test_batch_of_one_equals_batch_of_eight_and_is_deterministic(segmenter, batch_run, images):
    labels, _ = batch_run
    first = segmenter.segment(images[5:6])
    again = segmenter.segment(images[5:6])
    assert torch.equal(first[0], labels[5])
    assert torch.equal(first, again)
    first[0, 0, 0] = 0  # a normal tensor, not an inference-mode one: callers may edit it


def test_protocol_attributes(segmenter):
    assert isinstance(segmenter, Segmenter)
    assert segmenter.name == "upp-resnet50-upernet"
    assert segmenter.weights_id == "upp-resnet50-upernet/epoch_40"
    assert segmenter.preprocessing == PAPER_PREPROCESSING
    assert segmenter.class_names[:3] == ["-", "wall", "sky"] and len(segmenter.class_names) == 336
    assert not segmenter.encoder.training and not segmenter.decoder.training


@pytest.mark.parametrize(
    "bad, pattern",
    [
        (torch.zeros(1, 3, 256, 256), "must be uint8"),
        (torch.zeros(1, 3, 128, 128, dtype=torch.uint8), r"shape \(N, 3, 256, 256\), got \(1, 3, 128, 128\)"),
        (torch.zeros(3, 256, 256, dtype=torch.uint8), r"shape \(N, 3, 256, 256\)"),
        (torch.zeros(1, 4, 256, 256, dtype=torch.uint8), r"got \(1, 4, 256, 256\)"),
        (np.zeros((1, 3, 256, 256), dtype=np.uint8), "must be a torch.Tensor"),
    ],
)
def test_bad_input_is_a_clear_error(segmenter, bad, pattern):
    with pytest.raises(InputError, match=pattern):
        segmenter.segment(bad)


def test_empty_batch(segmenter):
    out = segmenter.segment(torch.zeros(0, 3, 256, 256, dtype=torch.uint8))
    assert out.shape == (0, 256, 256) and out.dtype == torch.int64


# ------------------------------------------------------------------------------------------ labels


def test_synthetic_labels_validate():
    labels = synthetic_labels()
    assert validate_labels(labels, HeadSizes(), "labels") == labels
    assert sum(len(v) for v in labels["object_part"].values()) == 427
    assert all(parts[0] == "-" for parts in labels["object_part"].values())


@pytest.mark.parametrize(
    "change, pattern",
    [
        (lambda d: d.pop("scene"), "key 'scene' is missing"),
        (lambda d: d["object"].pop(), "'object' lists 335 names, the object head has 336"),
        (lambda d: d["material"].append("x"), "'material' lists 27 names"),
        (lambda d: d["scene"].pop(0), "'scene' lists 364 names"),
        (lambda d: d["object_part"]["wall"].append("x"), "hold 428 names in all, the part head has 427"),
        (lambda d: d["object_part"].update({"unicorn": ["-"]}), "owner 'unicorn' is not in 'object'"),
        (lambda d: d.update({"object": {"a": 1}}), "'object' must be a list"),
        (lambda d: d.update({"part": [1, 2]}), "'part' must be a list"),
    ],
)
def test_bad_labels_name_the_problem(change, pattern):
    labels = json.loads(json.dumps(synthetic_labels()))
    change(labels)
    with pytest.raises(WeightsError, match=pattern):
        validate_labels(labels, HeadSizes(), "labels.json")


def test_unreadable_labels_file(tmp_path):
    path = tmp_path / LABELS_FILE
    path.write_text('{"object": [')
    with pytest.raises(WeightsError, match="cannot read .*labels.json"):
        read_labels(path)
    path.write_text("[]")
    with pytest.raises(WeightsError, match="must hold a JSON object"):
        read_labels(path)


def test_plain_constructor_checks_labels_against_heads():
    encoder_sd, decoder_sd = synthetic_upp_state_dicts(seed=0)
    with torch.device("meta"):
        encoder, decoder = ResNet50DeepStem(), UPerNetDecoder(HeadSizes(object=10))
    with pytest.raises(WeightsError, match="'object' lists 336 names, the object head has 10"):
        UPPSegmenter(encoder, decoder, synthetic_labels(), device="cpu")
    encoder, decoder = ResNet50DeepStem(), UPerNetDecoder()
    load_state_dict_checked(encoder, encoder_sd, "encoder")
    load_state_dict_checked(decoder, decoder_sd, "decoder")
    seg = UPPSegmenter(encoder, decoder, synthetic_labels(), device="cpu", weights_id="synthetic/0")
    assert seg.weights_id == "synthetic/0" and seg.num_classes == 336
    with pytest.raises(InputError, match="'gpu' is not a torch device"):
        UPPSegmenter(encoder, decoder, synthetic_labels(), device="gpu")


# ----------------------------------------------------------------------------------- loading files


def test_from_folder_names_a_damaged_file(tmp_path):
    folder = write_upp_weights(tmp_path, seed=0)
    data = (folder / DECODER_FILE).read_bytes()
    (folder / DECODER_FILE).write_bytes(data[: len(data) // 3])
    with pytest.raises(WeightsError, match=f"cannot read checkpoint .*{DECODER_FILE}"):
        UPPSegmenter.from_folder(folder, device="cpu")
    (folder / LABELS_FILE).write_text(json.dumps({"object": ["-"]}))
    with pytest.raises(WeightsError, match=f"{LABELS_FILE}: key 'material' is missing"):
        UPPSegmenter.from_folder(folder, device="cpu")


def test_default_device(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert default_device() == torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert default_device() == torch.device("mps")
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert default_device() == torch.device("cpu")


def test_weights_declaration():
    from fsd.segmenters.weights import UPP_WEIGHTS

    assert UPP_WEIGHTS.name == "upp-resnet50-upernet"
    assert [f.name for f in UPP_WEIGHTS.files] == [ENCODER_FILE, DECODER_FILE, LABELS_FILE]
    assert UPP_WEIGHTS.mirrors[0].startswith("http://netdissect.csail.mit.edu/")
    assert UPP_WEIGHTS.mirrors[1].startswith("https://dissect.csail.mit.edu/")
    assert "sceneparsing" in UPP_WEIGHTS.mirrors[2]
    sizes = {f.name: f.min_bytes for f in UPP_WEIGHTS.files}
    assert 85e6 < sizes[ENCODER_FILE] < 95e6 and 180e6 < sizes[DECODER_FILE] < 202e6
    with torch.device("meta"):
        counts = {"encoder": sum(p.numel() for p in ResNet50DeepStem().parameters()),
                  "decoder": sum(p.numel() for p in UPerNetDecoder().parameters())}
    assert dict(UPP_WEIGHTS.meta["parameters"]) == counts
    assert UPP_WEIGHTS.meta["heads"] == HeadSizes().as_dict()


def test_verify_rejects_wrong_structure(tmp_path):
    from fsd.hub import RemoteFile
    from fsd.segmenters.weights import verify_upp_file

    path = tmp_path / DECODER_FILE
    torch.save({"conv1.weight": torch.zeros(64, 3, 3, 3)}, path)
    with pytest.raises(WeightsError, match="'ppm_conv.0.0.weight' .* is missing"):
        verify_upp_file(path, RemoteFile(DECODER_FILE))
    labels = tmp_path / LABELS_FILE
    labels.write_text(json.dumps({**synthetic_labels(), "scene": ["a"]}))
    with pytest.raises(WeightsError, match="'scene' lists 1 names"):
        verify_upp_file(labels, RemoteFile(LABELS_FILE))


def test_from_pretrained_with_a_weights_folder(weights_root):
    seg = UPPSegmenter.from_pretrained(weights_dir=weights_root, device="cpu", progress=False)
    assert seg.weights_id == "upp-resnet50-upernet/epoch_40"
    assert torch.equal(seg.encoder.conv1.weight, synthetic_upp_state_dicts(0)[0]["conv1.weight"])
    assert torch.equal(seg.decoder.object_head[1].bias, synthetic_upp_state_dicts(0)[1]["object_head.1.bias"])


def _imported_modules(module: str) -> set[str]:
    """Every module ``module``'s source imports, at any depth (function-level imports included)."""
    import ast
    import importlib.util

    spec = importlib.util.find_spec(module)
    tree = ast.parse(Path(spec.origin).read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against the module's package
                package = module.rsplit(".", node.level)[0]
                base = f"{package}.{base}" if base else package
            names.add(base)
    return names


def test_weights_declaration_and_segmenter_import_in_one_direction():
    # upp loads what weights declares; weights (the declaration and its checks) never imports upp.
    assert "fsd.segmenters.upp" not in _imported_modules("fsd.segmenters.weights")
    assert "fsd.segmenters.weights" in _imported_modules("fsd.segmenters.upp")
    import subprocess
    import sys

    for first in ("fsd.segmenters.weights", "fsd.segmenters.upp"):
        code = (f"import {first}; import fsd.segmenters.upp as u, fsd.segmenters.weights as w; "
                "assert u.UPP_WEIGHTS is w.UPP_WEIGHTS and u.read_labels is w.read_labels")
        subprocess.run([sys.executable, "-c", code], check=True)
