"""Models, training loop and ONNX export (torch; CPU)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from cxrmesh.analysis.quantify import region_table, region_vector
from cxrmesh.contracts.tensors import BY_NAME, EMBED_DIM, MODEL_INPUT
from cxrmesh.export.onnx_export import PARITY_TOLERANCE, check_parity, export_model
from cxrmesh.ml import nets
from cxrmesh.ml.augment import augment_seg
from cxrmesh.ml.data import load_data
from cxrmesh.ml.ensemble import select_ensemble_weights
from cxrmesh.ml.loop import autocast, run_epochs
from cxrmesh.ml.metrics import auc, dice_scores, retrieval_metrics
from cxrmesh.ml.train import TrainConfig, train_all
from cxrmesh.ml.trainers.segmenter import train_segmenter
from cxrmesh.synth.corpus import generate


def test_soft_argmax_is_sub_pixel() -> None:
    h = w = 64
    ys, xs = np.mgrid[0:h, 0:w]
    target = (20.3, 41.7)
    g = np.exp(-((xs - target[0]) ** 2 + (ys - target[1]) ** 2) / (2 * 1.5**2))
    logits = torch.from_numpy(np.log(g + 1e-12)).float()[None, None] / 8.0
    xy, conf = nets.soft_argmax(logits, beta=8.0)
    assert xy[0, 0, 0].item() == pytest.approx(target[0], abs=0.02)
    assert xy[0, 0, 1].item() == pytest.approx(target[1], abs=0.02)
    assert 0 < conf.item() <= 1


def test_model_outputs_follow_the_spec() -> None:
    x = torch.rand(2, 1, MODEL_INPUT, MODEL_INPUT)
    with torch.no_grad():
        emb, att = nets.Embedder().eval()(x)
        assert emb.shape == (2, EMBED_DIM)
        assert torch.allclose(emb.norm(dim=1), torch.ones(2), atol=1e-5)
        assert tuple(att.shape[1:]) == BY_NAME["cxr_embedder"].outputs[1].dims
        probs = nets.Segmenter("lung_seg_fpn").eval()(x)
        assert tuple(probs.shape[1:]) == BY_NAME["lung_seg_fpn"].outputs[0].dims
        assert torch.allclose(probs.sum(dim=1), torch.ones(2, MODEL_INPUT, MODEL_INPUT), atol=1e-5)
        xy, conf = nets.Landmarker().eval()(x)
        assert xy.shape == (2, 2, 2) and conf.shape == (2, 2)
        assert ((xy >= -0.5) & (xy <= MODEL_INPUT - 0.5)).all()
    with pytest.raises(ValueError, match="unknown segmentation member"):
        nets.Segmenter("lung_seg_resnet9000")


@pytest.mark.parametrize("name", ["cxr_embedder", "lung_seg_unet", "cxr_landmarks", "prognosis_head"])
def test_onnx_export_matches_pytorch(tmp_path: Path, name: str) -> None:
    torch.manual_seed(0)
    model = {
        "cxr_embedder": nets.Embedder,
        "lung_seg_unet": lambda: nets.Segmenter("lung_seg_unet"),
        "cxr_landmarks": nets.Landmarker,
        "prognosis_head": nets.PrognosisHead,
    }[name]().eval()
    spec = BY_NAME[name]
    path = export_model(model, spec, tmp_path / f"{name}.onnx")
    parity = check_parity(model, spec, path, batches=(1, 3, 16))
    assert parity.max_abs_diff <= PARITY_TOLERANCE, parity
    import onnx

    graph = onnx.load(str(path)).graph
    assert [i.name for i in graph.input] == [t.name for t in spec.inputs]
    assert [o.name for o in graph.output] == [t.name for t in spec.outputs]
    assert not graph.input[0].type.tensor_type.shape.dim[0].HasField("dim_value")  # dynamic batch
    assert not list(tmp_path.glob("*.data")), "export must be a single file"


@pytest.fixture(scope="module")
def tiny_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("tiny") / "c"
    generate(out, n=30, seed=21, write_dicom=False, workers=2)
    return out


def test_training_is_resumable_and_writes_metrics(tmp_path: Path, tiny_corpus: Path) -> None:
    cfg = TrainConfig(
        corpus=tiny_corpus,
        out=tmp_path / "runs",
        weights=tmp_path / "weights",
        seg_epochs=1,
        seg_limit=8,
        landmark_epochs=1,
        embed_epochs=1,
        only=("landmarks", "embedder", "prognosis"),
    )
    metrics = train_all(cfg)
    assert {"landmark_error_mm", "retrieval", "prognosis"} <= set(metrics)
    assert json.loads((tmp_path / "runs" / "metrics.json").read_text()) == metrics
    history = (tmp_path / "runs" / "cxr_landmarks" / "history.jsonl").read_text().splitlines()
    assert len(history) == 1
    # resume: asking for 2 epochs continues from the checkpoint instead of starting over
    cfg.landmark_epochs = 2
    cfg.only = ("landmarks",)
    train_all(cfg)
    history = (tmp_path / "runs" / "cxr_landmarks" / "history.jsonl").read_text().splitlines()
    assert [json.loads(h)["epoch"] for h in history] == [1, 2]
    for name in ("cxr_landmarks", "cxr_embedder", "prognosis_head"):
        assert (tmp_path / "weights" / f"{name}.pt").is_file()


def test_load_data_puts_truth_in_the_input_frame(tiny_corpus: Path) -> None:
    data = load_data(tiny_corpus, limit=4)
    assert data.images.shape == (4, 1, MODEL_INPUT, MODEL_INPUT)
    assert data.lungs is not None and set(torch.unique(data.lungs).tolist()) == {0, 1, 2}
    lm = data.landmarks
    assert lm is not None and ((lm > 0) & (lm < MODEL_INPUT)).all()
    # the carina lies between the lungs in the input frame as in the model frame
    for i in range(4):
        x, y = lm[i, 0].round().long().tolist()
        assert data.lungs[i, y, x] == 0


def test_a_time_budget_is_judged_at_the_current_pace_not_the_slow_first_epoch(tmp_path: Path) -> None:
    """The first epoch also pays for start-up (cuDNN autotuning, several trainings sharing a GPU): a
    budget that ruled by it alone would cut the run for good; later, faster epochs win it back."""
    import time

    model = torch.nn.Linear(1, 1)

    def steps(epoch: int):
        time.sleep(0.6 if epoch == 0 else 0.01)
        yield model(torch.ones(1, 1)).sum()

    run_epochs("budgeted", model, 5, steps, tmp_path / "runs", tmp_path / "w", 1e-3, False, budget_s=2.0)
    history = (tmp_path / "runs" / "budgeted" / "history.jsonl").read_text().splitlines()
    assert len(history) == 5  # (at the first epoch's pace 3 would fit: 1 + 1.4 s / 0.6 s)
    assert (tmp_path / "w" / "budgeted.pt").is_file()


def test_retrieval_metrics_and_auc_on_known_data() -> None:
    g = np.eye(3, dtype=np.float32)[[0, 0, 1, 1, 2, 2]]
    labels = np.array([0, 0, 1, 1, 2, 2])
    m = retrieval_metrics(g[[0, 2, 4]], np.array([0, 1, 2]), g, labels)
    assert m["precision_at_1"] == 1.0 and m["map_at_r"] == 1.0 and m["vote_accuracy_at_10"] == 1.0
    assert auc(np.array([0.1, 0.2, 0.8, 0.9]), np.array([0, 0, 1, 1])) == 1.0
    assert auc(np.array([0.9, 0.8, 0.2, 0.1]), np.array([0, 0, 1, 1])) == 0.0


def test_region_table_measures_what_is_there() -> None:
    image = np.full((100, 100), 0.3, dtype=np.float32)
    lungs = np.zeros((100, 100), dtype=np.uint8)
    lungs[10:90, 10:45] = 1
    lungs[10:90, 55:90] = 2
    image[60:90, 55:90] = 0.8  # dense opacity filling the left lower zone
    table = region_table(image, lungs, (60.0, 50.0))
    assert table["left_lower"]["opacity_fraction"] == pytest.approx(30 / 40)
    assert table["right_upper"]["opacity_fraction"] == 0.0
    assert sum(r["area_fraction"] for r in table.values()) == pytest.approx(1.0)
    assert table["left_lower"]["mean_intensity"] > table["right_lower"]["mean_intensity"]
    assert region_vector(table).shape == (12,)


def _probs(labels: torch.Tensor, p: float) -> torch.Tensor:
    """Class probabilities putting ``p`` on ``labels`` and the rest evenly on the other two classes."""
    onehot = torch.nn.functional.one_hot(labels.long(), 3).permute(0, 3, 1, 2).float()
    return onehot * p + (1 - onehot) * (1 - p) / 2


def test_ensemble_selection_keeps_members_that_help_and_drops_harm() -> None:
    """Member a is sure and right on the left half but leans wrong on the right, b the mirror
    image, and a third member is wrong everywhere: a and b share the weight, their weighted mean
    beats either alone, and the wrong one gets none."""
    truth = torch.randint(0, 3, (4, 16, 16), generator=torch.Generator().manual_seed(0))
    right, wrong = _probs(truth, 0.9), _probs((truth + 1) % 3, 0.6)
    left = torch.zeros(16, 16, dtype=torch.bool)
    left[:, :8] = True
    a = torch.where(left, right, wrong)
    b = torch.where(left, wrong, right)
    bad = _probs((truth + 1) % 3, 0.9)
    weights = select_ensemble_weights({"a": a, "b": b, "bad": bad}, truth, rounds=10)
    assert weights["bad"] == 0 and weights["a"] > 0 and weights["b"] > 0
    assert abs(sum(weights.values()) - 1) < 1e-9
    mixed = dice_scores(weights["a"] * a + weights["b"] * b, truth).mean()
    assert mixed > max(dice_scores(a, truth).mean(), dice_scores(b, truth).mean())


def test_ensemble_selection_can_keep_every_member() -> None:
    """With ``keep_all`` the harmful member keeps its one starting pick, and no more; the helpful ones
    gain, so the weights still rank the members by what they add."""
    truth = torch.randint(0, 3, (4, 16, 16), generator=torch.Generator().manual_seed(0))
    right, wrong = _probs(truth, 0.9), _probs((truth + 1) % 3, 0.6)
    left = torch.zeros(16, 16, dtype=torch.bool)
    left[:, :8] = True
    probs = {
        "a": torch.where(left, right, wrong),
        "b": torch.where(left, wrong, right),
        "bad": _probs((truth + 1) % 3, 0.9),
    }
    weights = select_ensemble_weights(probs, truth, rounds=10, keep_all=True)
    assert weights["bad"] == pytest.approx(1 / 13)
    assert weights["a"] > weights["bad"] and weights["b"] > weights["bad"]
    assert sum(weights.values()) == pytest.approx(1)


def _two_lungs(n: int, size: int = 64) -> torch.Tensor:
    """Label maps with a narrow right lung on the image's left and a wide left lung on its right."""
    labels = torch.zeros(n, size, size, dtype=torch.uint8)
    labels[:, 12:52, 10:18] = 1
    labels[:, 12:52, 34:58] = 2
    return labels


def test_segmentation_augmentation_keeps_labels_with_the_image_and_sides_by_position() -> None:
    torch.manual_seed(0)
    labels = _two_lungs(64)
    images = (labels > 0).float()[:, None]  # lungs bright, so image and labels must stay aligned
    x, y = augment_seg(images, labels)
    assert x.shape == images.shape and y.shape == labels.shape and y.dtype == torch.long
    assert float(x.min()) >= 0 and float(x.max()) <= 1
    assert set(torch.unique(y).tolist()) <= {0, 1, 2}
    cols = torch.arange(labels.shape[-1], dtype=torch.float32)
    for img, lab in zip(x[:, 0], y, strict=True):
        right, left = (lab == 1).float(), (lab == 2).float()
        # the right-lung label is always the lung on the image's left, mirrored or not
        assert (right * cols).sum() / right.sum() < (left * cols).sum() / left.sum()
        # the image moved with its labels: labelled pixels are the bright ones
        assert img[lab > 0].mean() > img[lab == 0].mean() + 0.2
    assert not torch.equal(x, images)  # it does augment
    # about half the films are mirrored: then the wide lung is on the left and labelled right
    mirrored = float(((y == 1).sum(dim=(1, 2)) > (y == 2).sum(dim=(1, 2))).float().mean())
    assert 0.25 < mirrored < 0.75


def test_precision_choice_is_checked_and_bf16_can_be_switched_off() -> None:
    assert not autocast(torch.device("cpu"), "fp32")._enabled
    assert autocast(torch.device("cpu"), "bf16")._enabled
    with pytest.raises(ValueError, match="precision"):
        autocast(torch.device("cpu"), "fp8")


def test_a_segmentation_member_trains_and_its_weights_load_contiguous(
    tmp_path: Path, tiny_corpus: Path
) -> None:
    data = load_data(tiny_corpus)
    model = train_segmenter(
        "lung_seg_fpn", data, 1, tmp_path / "runs", tmp_path / "w", False, 4, precision="bf16"
    )
    assert (tmp_path / "runs" / "lung_seg_fpn" / "history.jsonl").read_text().count("epoch") == 1
    state = torch.load(tmp_path / "w" / "lung_seg_fpn.pt", weights_only=True)
    fresh = nets.Segmenter("lung_seg_fpn")
    fresh.load_state_dict(state)
    probs = fresh.eval()(data.images[:2].float())
    assert probs.shape == (2, 3, MODEL_INPUT, MODEL_INPUT)
    assert torch.allclose(probs.sum(dim=1), torch.ones(2, MODEL_INPUT, MODEL_INPUT), atol=1e-5)
    assert model.training is False
    # fine-tuning starts from those weights: at learning rate 0 the parameters stay theirs
    tuned = train_segmenter(
        "lung_seg_fpn", data, 1, tmp_path / "runs2", tmp_path / "w2", False, 4, init=tmp_path / "w", lr=0.0
    )
    for key, value in tuned.named_parameters():
        assert torch.equal(value.detach(), state[key]), key


def test_a_member_without_the_coordinate_channel_loads_unchanged() -> None:
    """Fine-tuning weights from before the coordinate channel starts from the same function."""
    import segmentation_models_pytorch as smp

    torch.manual_seed(0)
    old = smp.Unet(
        encoder_name=nets.SEG_ENCODER,
        encoder_weights=None,
        in_channels=1,
        classes=3,
        decoder_channels=(64, 32, 24, 16, 8),
    ).eval()
    member = nets.Segmenter("lung_seg_unet").eval()
    member.load_earlier_weights({f"net.{k}": v for k, v in old.state_dict().items()})
    image = torch.rand(2, 1, MODEL_INPUT, MODEL_INPUT)
    with torch.no_grad():
        before = torch.softmax(old(nets._prepare(image, nets.SEG_WORK)), dim=1)
        after = member(image)
    assert torch.allclose(before, after, atol=1e-6)
    # and the coordinate is used once trained: a non-zero kernel changes the output
    with torch.no_grad():
        member.net.encoder.model.conv_stem.weight[:, 1] += 0.5
        assert not torch.allclose(member(image), after, atol=1e-3)
