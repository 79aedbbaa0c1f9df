"""The flow-guided STCN (``model.prior_input``): the clip prior, the network contract (an
untrained one returns its prior; no prior, no run), training that beats the untrained copy
on phantoms, and the ``guided`` engine that feeds it the flow engine's passes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from slicevos.config import load_config
from slicevos.data.flow_prior import clip_flow_prior
from slicevos.data.optical_flow import FlowSettings
from slicevos.errors import InputError
from slicevos.inference.engines import GuidedPropagator, build_propagator, checkpoint_engine
from slicevos.inference.engines.flow.engine import FlowPropagator
from slicevos.inference.engines.stcn.engine import Propagator, load_propagation_net
from slicevos.metrics import dice
from slicevos.models.propagation import PropagationModelConfig, PropagationNet
from slicevos.phantom import PhantomConfig, make_phantom
from slicevos.preprocessing.windowing import window_volume
from slicevos.training.propagation import PropagationConfig, PropagationTrainer

TINY = Path(__file__).resolve().parents[2] / "configs" / "propagation" / "tiny.yaml"
TINY_NET = dict(key_backbone="mobilenetv3_small_050", value_backbone="mobilenetv3_small_050",
                key_dim=16, value_dim=32, decoder_channels=(32, 16, 16))


def guided_config(cache_dir: Path, out: Path, *assignments: str) -> PropagationConfig:
    return load_config(TINY, PropagationConfig, assignments=[
        f"data.cache_dir={cache_dir}", f"train.out_dir={out}", "data.val_cases=[phantom_0002]",
        "model.prior_input=true", "validation.batches=4", *assignments])


@pytest.fixture(scope="module")
def checkpoints(cache_dir, tmp_path_factory) -> dict[str, Path]:
    """2-step plain and guided checkpoints (for the engine contract, not quality)."""
    root = tmp_path_factory.mktemp("guided_runs")
    out = {}
    for name, prior in (("plain", "false"), ("guided", "true")):
        PropagationTrainer(guided_config(cache_dir, root / name, "train.iterations=2",
                                         "train.checkpoint_every=2",
                                         f"model.prior_input={prior}")).fit()
        out[name] = root / name / "last.pt"
    return out


def test_clip_prior_follows_the_motion():
    """A square moving 4 px per frame: the prior of each frame sits on the moved square;
    an empty slot is far outside everywhere."""
    images = np.full((3, 3, 64, 64), 30, np.uint8)
    masks = np.zeros((2, 64, 64), bool)
    for t in range(3):
        images[t, :, 20:36, 12 + 4 * t:28 + 4 * t] = 200
    masks[0, 20:36, 12:28] = True
    priors = clip_flow_prior(images, masks, FlowSettings(), clip=8.0)
    assert priors.shape == (2, 2, 64, 64) and priors.dtype == np.float32
    for t in (1, 2):
        moved = np.zeros((64, 64), bool)
        moved[20:36, 12 + 4 * t:28 + 4 * t] = True
        predicted = priors[t - 1, 0] > 0
        assert (predicted & moved).sum() / (predicted | moved).sum() > 0.8
    assert (priors[:, 1] == -8.0).all()


def test_clip_batches_carry_priors_only_when_asked(cache_dir):
    from dataclasses import replace

    from slicevos.data.clips import ClipData

    config = guided_config(cache_dir, Path("unused")).data
    plain = ClipData(config).batch(0)
    guided = ClipData(replace(config, flow_prior=True)).batch(0)
    assert plain.priors is None
    b, t, o, h, w = guided.masks.shape
    assert guided.priors.shape == (b, t - 1, o, h, w)
    assert torch.equal(guided.images, plain.images)  # the prior changes nothing else
    frames_only = ClipData(replace(config, flow_prior=True, prior_through="frames")).batch(0)
    assert frames_only.priors.shape == guided.priors.shape
    assert torch.equal(frames_only.masks, guided.masks)


def test_untrained_guided_network_returns_its_prior():
    net = PropagationNet(PropagationModelConfig(**TINY_NET, prior_input=True))
    images = torch.rand(2, 3, 3, 64, 64)
    masks = (torch.rand(2, 2, 64, 64) > 0.5).float()
    priors = torch.randn(2, 2, 2, 64, 64) * 20
    out = net(images, masks, priors=priors)
    expected = (priors / net.config.prior_temperature).clamp(-6, 6)
    assert torch.allclose(out.object_logits, expected)


def test_correction_limit_bounds_what_the_network_changes():
    net = PropagationNet(PropagationModelConfig(**TINY_NET, prior_input=True,
                                                prior_correction_limit=2.0))
    torch.nn.init.normal_(net.decoder.predict.weight, std=10.0)  # a wild correction
    priors = torch.randn(1, 1, 1, 64, 64) * 20
    out = net(torch.rand(1, 2, 3, 64, 64), torch.ones(1, 1, 64, 64), priors=priors)
    change = out.object_logits - (priors / 2).clamp(-6, 6)
    assert change.abs().max() <= 2.0 + 1e-5 and change.abs().max() > 1.0


def test_prior_contract_errors():
    guided = PropagationNet(PropagationModelConfig(**TINY_NET, prior_input=True))
    plain = PropagationNet(PropagationModelConfig(**TINY_NET))
    images, masks = torch.rand(1, 2, 3, 32, 32), torch.ones(1, 1, 32, 32)
    with pytest.raises(InputError, match="flow-guided.*--propagator guided") as error:
        guided(images, masks)
    assert "\n" not in str(error.value)
    with pytest.raises(InputError, match="takes no prior"):
        plain(images, masks, priors=torch.zeros(1, 1, 1, 32, 32))
    with pytest.raises(InputError, match="prior must have shape"):
        guided(images, masks, priors=torch.zeros(1, 1, 2, 32, 32))


def test_guided_training_beats_its_untrained_copy(cache_dir, tmp_path):
    """The untrained copy is the flow prior itself (zero-initialised correction): training
    must learn corrections that raise the held-out phantom's clip IoU above it."""
    trainer = PropagationTrainer(guided_config(cache_dir, tmp_path / "run",
                                               "train.iterations=100", "train.val_every=100",
                                               "train.checkpoint_every=100"))
    trainer.setup()
    trainer.module.eval()
    with torch.no_grad():
        untrained = trainer.validate(0)["iou_mean"]
    trained = trainer.fit()["iou_mean"]
    assert trained > untrained + 0.03, (untrained, trained)


def test_engines_match_the_checkpoint(checkpoints):
    assert checkpoint_engine(checkpoints["plain"]) == "stcn"
    assert checkpoint_engine(checkpoints["guided"]) == "guided"
    with pytest.raises(InputError, match="flow-guided STCN.*guided or fused"):
        build_propagator("stcn", checkpoints["guided"])
    with pytest.raises(InputError, match="plain STCN"):
        build_propagator("guided", checkpoints["plain"])
    net, _ = load_propagation_net(checkpoints["guided"])
    image = np.random.default_rng(0).integers(0, 256, (6, 3, 32, 32), np.uint8)
    session = Propagator(net, feature_dtype=torch.float32).start(image)
    session.add_mask(0, np.pad(np.ones((8, 8), np.uint8), 12))
    with pytest.raises(InputError, match="needs the flow engine's prior"):
        session.run()


def test_guided_engine_follows_flow_when_untrained(checkpoints):
    """An untrained guided network returns its flow prior in flow's units, so the guided
    engine's labels are the flow engine's; guided and fused compute each flow once, as
    flow does."""
    phantom = make_phantom(3, PhantomConfig(shape=(21, 64, 64)))
    keys = {z: phantom.labels[z] for z in (0, 10, 20)}
    untrained = Propagator(PropagationNet(PropagationModelConfig(**TINY_NET, prior_input=True)),
                           feature_dtype=torch.float32)
    engines = {"flow": FlowPropagator(), "guided": GuidedPropagator(untrained, FlowPropagator()),
               "fused": build_propagator("fused", checkpoints["guided"])}
    results, flows = {}, {}
    for name, propagator in engines.items():
        session = propagator.start(window_volume(phantom.hu, propagator.windows))
        for z, labels in keys.items():
            session.add_mask(z, labels)
        results[name] = session.run()
        flows[name] = session.stats.flow_fields
    assert flows["guided"] == flows["fused"] == flows["flow"]
    for name in ("guided", "fused"):
        organs = [k for k in np.unique(results["flow"]) if k]
        agreement = np.mean([dice(results["flow"] == k, results[name] == k)
                             for k in organs])
        assert agreement > (0.999 if name == "guided" else 0.9), (name, agreement)


def test_infer_runs_a_guided_checkpoint_as_guided(cache_dir, checkpoints, tmp_path):
    """slicevos-infer --propagation GUIDED.pt without --propagator runs the guided engine;
    --propagator stcn with it stops with the one-line error."""
    import json

    from slicevos.cli.common import PROPAGATORS
    from slicevos.cli.infer_volume import main as infer
    from slicevos.inference.engines import ENGINES

    assert PROPAGATORS == ENGINES
    dataset = cache_dir.parent / "ds"
    image = dataset / "imagesTr" / "phantom_0000_0000.nii.gz"
    truth = dataset / "labelsTr" / "phantom_0000.nii.gz"
    common = [str(image), str(tmp_path / "seg.nii.gz"), "--propagation",
              str(checkpoints["guided"]), "--keys", str(truth), "--key-slices", "4,12",
              "--schema", "flare22", "--quiet"]
    assert infer([*common, "--report"]) == 0
    report = json.loads((tmp_path / "seg_report.json").read_text())
    assert report["config"]["propagator"] == "guided"
    assert infer([*common, "--propagator", "stcn", "--overwrite"]) != 0
