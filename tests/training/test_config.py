import json

import pytest
import torch

from napari_4dstem_autoencoder.data.preprocess import PreprocessConfig
from napari_4dstem_autoencoder.model.config import ModelConfig
from napari_4dstem_autoencoder.objective import ObjectiveConfig
from napari_4dstem_autoencoder.training.presets import DEFAULT_PRESET, get_preset
from napari_4dstem_autoencoder.training.config import TrainConfig
from napari_4dstem_autoencoder.training.device import choose_precision, resolve_device


def test_config_json_round_trip_keeps_every_field():
    cfg = TrainConfig(model=ModelConfig(pool_schedule="to4"), epochs=3,
                      objective=ObjectiveConfig(lambda_div=0.0, graph_weight=0.5),
                      preprocess=PreprocessConfig(detector_bin=2, detector_crop=(0, 64, 0, 64)),
                      train_subset=100, max_minutes=2.5, device="cuda:1", amp="bf16",
                      checkpoint_path="/tmp/x.safetensors")
    back = TrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert back == cfg
    assert back.preprocess.detector_crop == (0, 64, 0, 64)
    assert back.model_config().pool_schedule == "to4"
    assert back.objective_config() == ObjectiveConfig(lambda_div=0.0, graph_weight=0.5)


def test_model_and_objective_default_to_the_preset_and_can_be_overridden():
    assert TrainConfig().preset == DEFAULT_PRESET  # the measured default, not the seed
    seed = TrainConfig(preset="seed")
    assert seed.model_config() == get_preset("seed").model
    assert seed.objective_config() == get_preset("seed").objective
    own = TrainConfig(preset="seed", objective=ObjectiveConfig(lambda_div=0.0))
    assert own.objective_config().lambda_div == 0.0
    assert own.model_config() == get_preset("seed").model


@pytest.mark.parametrize("changes, match", [
    ({"epochs": 0}, "epochs"),
    ({"batch_size": 1}, "batch_size"),
    ({"val_fraction": 1.0}, "val_fraction"),
    ({"device": "tpu"}, "unknown device"),
    ({"device": "cpu:1"}, "unknown device"),
    ({"amp": "fp16"}, "amp"),
    ({"lr_schedule": "step"}, "lr_schedule"),
    ({"preset": "nonexistent"}, "unknown preset"),
    ({"preset": "graph"}, "unknown preset"),  # research presets left the product
    ({"max_minutes": 0}, "max_minutes"),
])
def test_bad_values_are_refused_with_the_field_named(changes, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig(**changes)


def test_unknown_fields_in_a_stored_config_are_refused():
    with pytest.raises(ValueError, match="unknown training config fields"):
        TrainConfig.from_dict({"epochs": 1, "learning_rate": 3})


def test_device_resolution_without_a_gpu():
    assert resolve_device("cpu").type == "cpu"
    if not torch.cuda.is_available():
        assert resolve_device("auto").type in ("cpu", "mps")
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda:0")


def test_precision_choices_per_device():
    cuda = choose_precision(torch.device("cuda", 0), "auto", "auto")
    assert cuda.autocast_dtype is torch.bfloat16 and cuda.channels_last
    cpu = choose_precision(torch.device("cpu"), "auto", "auto")
    assert cpu.autocast_dtype is None and not cpu.channels_last
    # inference on the CPU: channels_last by default (oneDNN), never bf16
    infer = choose_precision(torch.device("cpu"), "auto", "auto", inference=True)
    assert infer.channels_last and infer.autocast_dtype is None
    assert not choose_precision(torch.device("cpu"), "auto", False, inference=True).channels_last
    assert choose_precision(torch.device("cuda"), "off", False).autocast_dtype is None
    forced = choose_precision(torch.device("cpu"), "bf16", True)
    assert forced.autocast_dtype is torch.bfloat16 and forced.channels_last
    x = forced.prepare_input(torch.zeros(2, 1, 4, 4))
    assert x.is_contiguous(memory_format=torch.channels_last)
    with forced.autocast():
        y = torch.nn.functional.linear(torch.ones(2, 3), torch.ones(4, 3))
    assert y.dtype is torch.bfloat16
