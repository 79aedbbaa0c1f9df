"""Reference networks: the shared tester per registered model, the registry, the CPS pair and
the paper-sized defaults (build only)."""

from __future__ import annotations

import pytest
import torch
import yaml

from slicevos.config import from_dict
from slicevos.models import ModelConfig, available_models, build_model
from slicevos.models.reference import CPSConfig, CPSPair, build_cps_pair

from .base import IN_CHANNELS, NUM_CLASSES, ModelTester

TINY_TRANSUNET = {
    "img_size": 64, "backbone": "resnetv2_50",
    "backbone_kwargs": {"layers": [1, 1, 1], "channels": [32, 64, 128], "stem_chs": 16,
                        "preact": False, "norm_layer": "groupnorm1", "conv_layer": "std_conv"},
    "vit_dim": 64, "vit_depth": 1, "vit_heads": 4, "decoder_head_channels": 64,
    "decoder_channels": [32, 16, 16, 8],
}
TINY_DEEPLAB = {"encoder_name": "tu-mobilenetv3_small_050", "decoder_channels": 32}


class TestTransUNet(ModelTester):
    model_name = "transunet"
    params = TINY_TRANSUNET


class TestDeepLabV3Plus(ModelTester):
    model_name = "deeplabv3plus"
    params = TINY_DEEPLAB


def test_every_registered_model_has_a_tester() -> None:
    tested = {cls.model_name for cls in ModelTester.__subclasses__()}
    assert set(available_models()) <= tested, f"untested models: {set(available_models()) - tested}"


def test_unknown_model_name_lists_the_available_ones() -> None:
    with pytest.raises(ValueError, match=r"unknown model 'unet'.*deeplabv3plus.*transunet"):
        build_model(ModelConfig("unet"), NUM_CLASSES)


def test_unknown_param_names_the_key() -> None:
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['vit_layers'\] for TransUNetParams"):
        build_model(ModelConfig("transunet", params={**TINY_TRANSUNET, "vit_layers": 2}), NUM_CLASSES)


def test_bad_backbone_strides_are_reported() -> None:
    params = {**TINY_TRANSUNET, "backbone": "convnext_atto", "backbone_kwargs": {}}
    with pytest.raises(ValueError, match=r"strides \(4, 8, 16, 32\)"):
        build_model(ModelConfig("transunet", params=params), NUM_CLASSES)


def test_model_config_from_yaml_builds() -> None:
    text = yaml.safe_dump({"name": "transunet", "position_encoding": False, "params": TINY_TRANSUNET})
    cfg = from_dict(ModelConfig, yaml.safe_load(text))
    model = build_model(cfg, NUM_CLASSES, in_channels=1)
    assert model.position is None and model.in_channels == 1
    assert model(torch.rand(1, 1, 32, 48)).shape == (1, NUM_CLASSES, 32, 48)


def tiny_pair(seed: int = 0) -> CPSPair:
    torch.manual_seed(seed)
    cfg = CPSConfig(ModelConfig("transunet", params=TINY_TRANSUNET),
                    ModelConfig("deeplabv3plus", params=TINY_DEEPLAB))
    return build_cps_pair(cfg, NUM_CLASSES, IN_CHANNELS)


def test_cps_pair_forward_and_predict_proba() -> None:
    pair = tiny_pair().eval()
    assert pair.output_stride == 16 and pair.num_classes == NUM_CLASSES
    images, positions = torch.rand(1, IN_CHANNELS, 48, 64), torch.tensor([0.25])
    with torch.no_grad():
        logits_a, logits_b = pair(images, positions)
        proba = pair.predict_proba(images, positions)
    assert logits_a.shape == logits_b.shape == (1, NUM_CLASSES, 48, 64)
    assert proba.shape == (1, NUM_CLASSES, 48, 64) and proba.dtype == torch.float32
    expected = logits_a.softmax(1) + logits_b.softmax(1)
    torch.testing.assert_close(proba, expected)
    torch.testing.assert_close(proba.sum(1), torch.full((1, 48, 64), 2.0))
    assert proba.min() >= 0 and proba.max() <= 2


def test_cps_pair_rejects_different_class_counts() -> None:
    net_a = build_model(ModelConfig("transunet", params=TINY_TRANSUNET), 3)
    net_b = build_model(ModelConfig("deeplabv3plus", params=TINY_DEEPLAB), 4)
    with pytest.raises(ValueError, match="num_classes: 3 vs 4"):
        CPSPair(net_a, net_b)


def test_cps_output_stride_is_lcm() -> None:
    deeplab_os8 = ModelConfig("deeplabv3plus", params={**TINY_DEEPLAB, "encoder_depth": 3})
    pair = build_cps_pair(CPSConfig(deeplab_os8, ModelConfig("transunet", params=TINY_TRANSUNET)),
                          NUM_CLASSES)
    assert (pair.net_a.output_stride, pair.net_b.output_stride, pair.output_stride) == (8, 16, 16)


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_paper_transunet_builds_with_about_105m_parameters() -> None:
    model = build_model(ModelConfig("transunet"), 14)
    assert 100e6 <= n_params(model) <= 110e6
    assert model.encoder.grid_size == (32, 32) and len(model.encoder.blocks) == 12
    assert model.encoder.skip_channels == (512, 256, 64)


def test_paper_deeplab_builds_with_efficientnet_b3() -> None:
    model = build_model(ModelConfig("deeplabv3plus"), 14)
    assert model.output_stride == 16
    assert 10e6 <= n_params(model) <= 14e6
    assert "efficientnet-b3" in model.smp_model.name


def test_paper_deeplab_has_no_trainable_parameter_without_gradient():
    """DDP fails on trainable parameters the forward never uses (the paper's EfficientNet-B3
    encoder keeps its classifier head): every trainable parameter gets a gradient."""
    from slicevos.models.reference.deeplab import deeplabv3plus

    net = deeplabv3plus(num_classes=3, in_channels=3, position_encoding=True)
    net(torch.rand(2, 3, 64, 64), torch.tensor([0.25, 0.75])).sum().backward()
    missing = [name for name, p in net.named_parameters() if p.requires_grad and p.grad is None]
    assert missing == []
