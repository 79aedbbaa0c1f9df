"""A briefly trained tiny STCN, driven by the propagation session, carries an organ from two
key slices better than copying the nearest key."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from slicevos.benchmarks.baselines import nearest_key_copy
from slicevos.config import load_config
from slicevos.data.cache_build import PrepareConfig, prepare_cache
from slicevos.inference.engines.stcn.engine import Propagator
from slicevos.metrics.overlap import dice
from slicevos.phantom import PhantomConfig, make_phantom, write_phantom_dataset
from slicevos.preprocessing.windowing import window_volume
from slicevos.training.propagation import PropagationConfig, PropagationTrainer

ITERATIONS = 300
LIVER = 1


def test_nearest_key_copy():
    a, b = np.full((2, 2), 1, np.uint8), np.full((2, 2), 2, np.uint8)
    out = nearest_key_copy({1: a, 5: b}, 6)
    assert [int(s[0, 0]) for s in out] == [1, 1, 1, 1, 2, 2]  # z=3 is a tie -> the lower key
    with pytest.raises(ValueError, match="outside"):
        nearest_key_copy({7: a}, 6)


@pytest.mark.slow
def test_trained_stcn_beats_nearest_key_copy(tmp_path):
    write_phantom_dataset(tmp_path / "ds", n_labeled=3, n_unlabeled=0,
                          config=PhantomConfig(shape=(24, 64, 64)), seed=1, progress=False)
    prepare_cache(tmp_path / "ds", tmp_path / "cache", PrepareConfig(schema="flare22", workers=1),
                  progress=False)
    config = load_config("configs/propagation/tiny.yaml", PropagationConfig, assignments=[
        f"data.cache_dir={tmp_path / 'cache'}", f"train.out_dir={tmp_path / 'run'}",
        f"train.iterations={ITERATIONS}", f"train.val_every={ITERATIONS}",
        f"train.checkpoint_every={ITERATIONS}", "data.val_cases=[phantom_0002]",
        f"data.gap_curriculum_iterations={ITERATIONS // 2}", "data.max_gap_end=8",
        f"loss.ohem_warmup_end={ITERATIONS}", "train.optim.milestones=[240, 270]"])
    trainer = PropagationTrainer(config)
    trainer.fit()

    phantom = make_phantom(7, PhantomConfig(shape=(24, 64, 64)))  # an unseen anatomy
    truth = (phantom.labels == LIVER).astype(np.uint8)
    present = np.flatnonzero(truth.any(axis=(1, 2)))
    k1, k2 = int(present[len(present) // 4]), int(present[3 * len(present) // 4])
    session = Propagator(trainer.module, feature_dtype=torch.float32).start(
        window_volume(phantom.hu))
    session.add_mask(k1, truth[k1])
    session.add_mask(k2, truth[k2])
    propagated = session.run()
    copied = nearest_key_copy({k1: truth[k1], k2: truth[k2]}, len(truth))
    others = [z for z in range(len(truth)) if z not in (k1, k2)]
    dsc_stcn = dice(truth[others], propagated[others] == LIVER)
    dsc_copy = dice(truth[others], copied[others])
    assert dsc_stcn > dsc_copy + 0.1, (dsc_stcn, dsc_copy)


def test_contour_interpolation_between_two_keys():
    pytest.importorskip("itk")
    from slicevos.benchmarks.baselines import contour_interpolation

    small, large = np.zeros((32, 32), np.uint8), np.zeros((32, 32), np.uint8)
    small[12:20, 12:20] = 3   # 64 px
    large[8:24, 8:24] = 3     # 256 px
    out = contour_interpolation({2: small, 10: large}, 14)
    areas = [(out[z] == 3).sum() for z in range(14)]
    assert areas[2] == 64 and areas[10] == 256
    assert all(areas[z] <= areas[z + 1] for z in range(2, 10))  # grows between the keys
    assert 64 < areas[6] < 256
    assert areas[0] == areas[1] == areas[12] == areas[13] == 0  # no extrapolation
