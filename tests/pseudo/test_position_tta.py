"""Position TTA members: the same network under transformed relative slice positions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from slicevos.cli.benchmark_pseudo import TTA_CHOICES as BENCHMARK_TTA
from slicevos.cli.generate_pseudo_labels import TTA_CHOICES as GENERATE_TTA
from slicevos.errors import InputError
from slicevos.inference.reference.ensemble import (
    POSITION_TTA,
    TTA_CHOICES,
    ReferenceMember,
    predict_members,
)
from slicevos.inference.reference.segmenter import ReferenceModelInfo, ReferenceSegmenter
from slicevos.io.labels import FLARE22
from slicevos.io.volume import Geometry, Volume
from slicevos.preprocessing.windowing import resolve_windows


class PositionProbe(torch.nn.Module):
    """Records the positions it is given; predicts class 1 where position > 0.5, else 0."""

    output_stride = 1

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[torch.Tensor] = []

    def forward(self, images: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        self.seen.append(positions.detach().clone())
        n, _, h, w = images.shape
        up = (positions > 0.5).float().view(n, 1, 1, 1).expand(n, 1, h, w)
        return torch.cat([1 - up, up, torch.zeros(n, FLARE22.num_classes - 2, h, w)], 1) * 10


def _segmenter(tmp_path: Path) -> tuple[ReferenceSegmenter, PositionProbe]:
    path = tmp_path / "probe.pt"
    path.write_bytes(b"probe")
    probe = PositionProbe()
    segmenter = ReferenceSegmenter(probe, "cpu", batch_size=64)
    segmenter.info = ReferenceModelInfo(FLARE22, resolve_windows(("abdomen",)), path)
    return segmenter, probe


def _volume(depth: int = 21) -> Volume:
    return Volume(np.zeros((depth, 4, 4), np.float32),
                  Geometry(np.diag([-1.0, -1.0, 2.0, 1.0]), (4, 4, depth)))


@pytest.mark.parametrize("tta", sorted(POSITION_TTA))
def test_position_member_feeds_shifted_positions_and_records_them(tmp_path, tta):
    segmenter, probe = _segmenter(tmp_path)
    plain = ReferenceMember(segmenter, "ckpt0")
    member = ReferenceMember(segmenter, f"ckpt0+{tta}", position=tta)
    volume = _volume()
    predict_members(volume, [plain, member])
    base, shifted = probe.seen[0].numpy(), probe.seen[1].numpy()
    offset, scale = POSITION_TTA[tta]
    np.testing.assert_allclose(base, np.arange(21) / 20, atol=1e-6)
    np.testing.assert_allclose(shifted, offset + scale * base, atol=1e-6)
    identity = member.identity()
    assert identity["name"] == f"ckpt0+{tta}" and identity["flip"] is None
    assert identity["position"] == {"tta": tta, "offset": offset, "scale": scale}
    assert "position" not in plain.identity()  # members without one keep their identity


def test_shift_changes_labels_where_the_network_uses_position(tmp_path):
    segmenter, _ = _segmenter(tmp_path)
    volume = _volume()
    plain = ReferenceMember(segmenter, "p").predict(volume)[:, 0, 0]
    up = ReferenceMember(segmenter, "u", position="pos_shift_up").predict(volume)[:, 0, 0]
    down = ReferenceMember(segmenter, "d", position="pos_shift_down").predict(volume)[:, 0, 0]
    none = ReferenceMember(segmenter, "n", position="pos_none").predict(volume)[:, 0, 0]
    z = np.arange(21) / 20
    np.testing.assert_array_equal(plain, z > 0.5)
    np.testing.assert_array_equal(up, 0.15 + 0.85 * z > 0.5)
    np.testing.assert_array_equal(down, 0.85 * z > 0.5)
    np.testing.assert_array_equal(none, np.zeros(21))  # 0.5 is not > 0.5
    assert up.sum() > plain.sum() > down.sum()


def test_unknown_position_tta_is_refused_and_cli_choices_match(tmp_path):
    segmenter, _ = _segmenter(tmp_path)
    with pytest.raises(InputError):
        ReferenceMember(segmenter, "x", position="pos_sideways")
    assert tuple(BENCHMARK_TTA) == tuple(GENERATE_TTA) == tuple(TTA_CHOICES)


def test_uses_position_tells_pairs_with_and_without_the_position_input():
    """A pair trained without the slice position gives the same labels under every position
    transform: reference_members leaves those members out (``uses_position``)."""
    import yaml

    from slicevos.config import from_dict
    from slicevos.inference.reference.ensemble import uses_position
    from slicevos.models.reference.cps import CPSConfig, build_cps_pair

    root = Path(__file__).resolve().parents[2]
    model = yaml.safe_load((root / "configs/reference/tiny.yaml").read_text())["model"]
    assert uses_position(build_cps_pair(from_dict(CPSConfig, model), 14, 3))
    for net in model.values():
        net["position_encoding"] = False
    assert not uses_position(build_cps_pair(from_dict(CPSConfig, model), 14, 3))
    assert uses_position(PositionProbe())  # cannot tell: keep the members
