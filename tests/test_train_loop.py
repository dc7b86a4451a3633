"""The training step's rules on their own: the loss normalised by the masks' area (the
reference divided by every value, so a small subject learnt less), and gradient checkpointing
on by default on CUDA only, or as the operator sets it."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from sdxl.train.loop import masked_mse
from sdxl.train.options import TrainRequest
from sdxl.train.training import Training, TrainSettings


@pytest.fixture
def pair():
    generator = torch.Generator().manual_seed(0)
    predicted = torch.randn(2, 4, 8, 8, generator=generator)
    target = torch.randn(2, 4, 8, 8, generator=generator)
    return predicted, target


def test_a_whole_mask_gives_the_mean_squared_error(pair):
    predicted, target = pair
    ones = torch.ones(2, 1, 8, 8)
    assert torch.allclose(masked_mse(predicted, target, ones), F.mse_loss(predicted, target))


def test_the_loss_is_the_mean_over_what_the_mask_keeps_whatever_its_area(pair):
    predicted, target = pair
    left = torch.zeros(2, 1, 8, 8)
    left[..., :3] = 1.0  # the subject: 3 columns of 8
    expected = F.mse_loss(predicted[..., :3], target[..., :3])
    assert torch.allclose(masked_mse(predicted, target, left), expected)
    assert torch.allclose(masked_mse(predicted, target, left * 0.25), expected)  # a soft mask


def test_a_half_weighted_region_counts_half(pair):
    predicted, target = pair
    masks = torch.ones(2, 1, 8, 8)
    masks[..., 4:] = 0.5
    errors = (predicted - target) ** 2
    expected = (errors[..., :4].sum() + 0.5 * errors[..., 4:].sum()) / (2 * 4 * 8 * 6)
    assert torch.allclose(masked_mse(predicted, target, masks), expected)


@pytest.mark.parametrize(
    ("setting", "device", "expected"),
    [
        ("auto", "cuda", True),
        ("auto", "cpu", False),
        ("1", "cpu", True),
        ("0", "cuda", False),
    ],
)
def test_gradient_checkpointing_is_on_by_default_on_cuda_only(tmp_path, setting, device, expected):
    settings = TrainSettings(gradient_checkpointing=setting)
    training = Training(TrainRequest(input_images="photos.zip"), tmp_path, settings)
    models = SimpleNamespace(device=torch.device(device))
    assert training._checkpointing(models) is expected


def test_the_operators_switch_is_read_from_the_environment():
    assert TrainSettings.from_env({}).gradient_checkpointing == "auto"
    on = TrainSettings.from_env({"SDXL_TRAIN_GRADIENT_CHECKPOINTING": "1"})
    assert on.gradient_checkpointing == "1"
    with pytest.raises(Exception, match="SDXL_TRAIN_GRADIENT_CHECKPOINTING"):
        TrainSettings.from_env({"SDXL_TRAIN_GRADIENT_CHECKPOINTING": "sometimes"})
