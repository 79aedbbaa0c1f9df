"""Small slices on a finer network grid (``slicevos.inference.engines.stcn.slice_scale``): the factor
rule, the round trips between the grids, and STCN / guided sessions that run on the finer
grid but answer on the scan's own."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from slicevos.inference.engines import GuidedPropagator
from slicevos.inference.engines.flow.engine import FlowPropagator
from slicevos.inference.engines.stcn.engine import Propagator
from slicevos.inference.engines.stcn.slice_scale import SliceScaler, upsample_factor
from slicevos.metrics import dice
from slicevos.models.propagation import PropagationModelConfig, PropagationNet
from slicevos.phantom import PhantomConfig, make_phantom
from slicevos.preprocessing.padding import pad_to_multiple
from slicevos.preprocessing.windowing import DEFAULT_WINDOWS, window_volume

TINY_NET = dict(key_backbone="mobilenetv3_small_050", value_backbone="mobilenetv3_small_050",
                key_dim=16, value_dim=32, decoder_channels=(32, 16, 16))


def test_the_factor_rule():
    assert upsample_factor(122, 101, 256) == 2
    assert upsample_factor(40, 30, 256) == 2           # at most twice as fine
    assert upsample_factor(300, 120, 256) == 1         # the longer side decides
    assert upsample_factor(122, 101, 0) == 1


def test_factor_one_only_pads_and_crops():
    scaler = SliceScaler(50, 37, 1, 16)
    images = torch.rand(2, 3, 50, 37)
    assert torch.equal(scaler.images(images), pad_to_multiple(images, 16))
    scores = torch.rand(4, 64, 48)
    assert torch.equal(scaler.scores(scores), scores[:, :50, :37])


def test_the_finer_grid_round_trips():
    scaler = SliceScaler(50, 37, 2, 16)
    images = torch.rand(1, 3, 50, 37)
    fine = scaler.images(images)
    assert fine.shape == (1, 3, 112, 80)
    labels = torch.from_numpy(np.random.default_rng(0).integers(0, 4, (50, 37)))
    one_hot = torch.nn.functional.one_hot(scaler.labels(labels), 4).permute(2, 0, 1).float()
    assert torch.equal(scaler.scores(one_hot).argmax(0), labels)   # labels come back exactly
    rows = torch.arange(50, dtype=torch.float32)[:, None].expand(50, 37) - 20.0
    prior = scaler.prior(rows[None], floor=-24.0)
    assert prior.shape == (1, 112, 80) and prior.min() == -24.0 and prior.max() == 24.0
    back = scaler.scores(prior, distances=True)[0]
    inside = (rows.abs() < 10)                          # away from the clamp and the ends
    assert torch.allclose(back[inside], rows[inside], atol=1e-4)


@pytest.fixture(scope="module")
def small_phantom():
    phantom = make_phantom(3, PhantomConfig(shape=(21, 64, 64)))
    return phantom, {z: phantom.labels[z] for z in (0, 10, 20)}


def _run(propagator, phantom, keys):
    session = propagator.start(window_volume(phantom.hu, propagator.windows or DEFAULT_WINDOWS))
    for z, labels in keys.items():
        session.add_mask(z, labels)
    return session, session.run()


def test_an_stcn_session_on_the_finer_grid_answers_on_the_scan_grid(small_phantom):
    phantom, keys = small_phantom
    torch.manual_seed(0)
    net = PropagationNet(PropagationModelConfig(**TINY_NET))
    coarse, _ = _run(Propagator(net, feature_dtype=torch.float32), phantom, keys)
    session, labels = _run(Propagator(net, feature_dtype=torch.float32, upsample_below=128),
                           phantom, keys)
    assert session.engine.scale.factor == 2 and coarse.engine.scale.factor == 1
    assert labels.shape == phantom.labels.shape and labels.dtype == np.uint8
    for z, key in keys.items():
        assert np.array_equal(labels[z], key)


def test_an_untrained_guided_network_on_the_finer_grid_scales_its_prior(small_phantom):
    """On a grid twice as fine the prior is in fine pixels (twice the numbers), and the
    network saturates at the same ±prior_logit_clip logits, so an untrained guided network
    there must give what one on the scan's grid with half the logit clip gives (both are
    flow's distances clipped at ±6 scan pixels), up to the resampling."""
    phantom, keys = small_phantom

    def guided(logit_clip: float, upsample_below: int):
        net = PropagationNet(PropagationModelConfig(**TINY_NET, prior_input=True,
                                                    prior_logit_clip=logit_clip))
        stcn = Propagator(net, feature_dtype=torch.float32, upsample_below=upsample_below)
        return _run(GuidedPropagator(stcn, FlowPropagator()), phantom, keys)

    fine_session, fine = guided(6.0, 128)
    coarse_session, coarse = guided(3.0, 0)
    assert (fine_session.engine.stcn.scale.factor, coarse_session.engine.stcn.scale.factor) \
        == (2, 1)
    # the finer grid moves boundaries by up to a pixel: judge the large organs, and every
    # label pixel of the volume
    organs = [k for k in np.unique(coarse) if (coarse == k).sum() >= 300 and k]
    agreement = min(dice(coarse == k, fine == k) for k in organs)
    same_foreground = dice(coarse > 0, fine > 0)
    assert len(organs) >= 3 and agreement > 0.93 and same_foreground > 0.96, \
        (agreement, same_foreground)


def test_a_negative_setting_is_refused():
    with pytest.raises(ValueError, match="upsample_below"):
        Propagator(PropagationNet(PropagationModelConfig(**TINY_NET)), upsample_below=-1)
