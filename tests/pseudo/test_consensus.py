"""Consensus score and member fusion on hand-computed cases (arithmetic written out)."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest

from slicevos.errors import InputError
from slicevos.pseudo import consensus as consensus_module
from slicevos.pseudo.consensus import (
    DEFAULT_VARIANT,
    VARIANTS,
    ConsensusScore,
    consensus_score,
    fuse_members,
)


def members(*rows: list) -> np.ndarray:
    """Members given as nested lists (D, H, W) -> uint8 (M, D, H, W)."""
    return np.array(rows, dtype=np.uint8)


def test_two_members_one_slice_both_variants():
    # m0 = [1 1 0 0], m1 = [1 0 0 0]; mean mask = [1, .5, 0, 0], sum 1.5
    labels = members([[[1, 1, 0, 0]]], [[[1, 0, 0, 0]]])
    dsc_m0 = 2 * (1 + 0.5) / (2 + 1.5)        # 6/7
    dsc_m1 = 2 * 1 / (1 + 1.5)                # 0.8
    score = consensus_score(labels, [1], variant="dice_mean")
    assert score.per_class[1] == pytest.approx((dsc_m0 + dsc_m1) / 2)
    assert score.volume == pytest.approx((dsc_m0 + dsc_m1) / 2)
    # majority (> M/2 = 1 vote, so both) = [1 0 0 0]: IoU m0 = 1/2, m1 = 1/1
    paper = consensus_score(labels, [1], variant="paper_iou_majority")
    assert paper.per_class[1] == pytest.approx((0.5 + 1.0) / 2)
    assert paper.variant == "paper_iou_majority"


def test_empty_slice_rules_union_and_all():
    # class 1: slice 0 same in both members, slice 1 only in m0, slice 2 in nobody
    m0 = [[[1, 1]], [[1, 0]], [[0, 0]]]
    m1 = [[[1, 1]], [[0, 0]], [[0, 0]]]
    labels = members(m0, m1)
    # slice 1: mean mask = [.5, 0]; m0: 2*.5/(1+.5) = 2/3; m1 empty vs non-empty mean -> 0
    # slice 2: both empty -> 1 for each member (counted only with slices="all")
    assert consensus_score(labels, [1], "dice_mean").per_class[1] == pytest.approx(
        (1 + 1 + 2 / 3 + 0) / 4)
    assert consensus_score(labels, [1], "dice_mean", slices="all").per_class[1] == pytest.approx(
        (1 + 1 + 2 / 3 + 0 + 1 + 1) / 6)
    # paper: slice 1 majority (needs 2 votes) is empty: m0 non-empty -> 0, m1 empty -> 1
    paper = consensus_score(labels, [1], variant="paper_iou_majority")
    assert paper.per_class[1] == pytest.approx((1 + 1 + 0 + 1) / 4)
    paper_all = consensus_score(labels, [1], variant="paper_iou_majority", slices="all")
    assert paper_all.per_class[1] == pytest.approx((1 + 1 + 0 + 1 + 1 + 1) / 6)


def test_three_members_per_class_and_absent_class():
    # slice 0, class 1: m0 [1 1 0], m1 [1 0 0], m2 [1 1 1] -> n = [3 2 1], mean [1 2/3 1/3], sum 2
    # slice 1, class 3: identical in all members; class 2: predicted by nobody
    m0 = [[[1, 1, 0]], [[3, 0, 0]]]
    m1 = [[[1, 0, 0]], [[3, 0, 0]]]
    m2 = [[[1, 1, 1]], [[3, 0, 0]]]
    labels = members(m0, m1, m2)
    dsc = [2 * (1 + 2 / 3) / (2 + 2), 2 * 1 / (1 + 2), 2 * (1 + 2 / 3 + 1 / 3) / (3 + 2)]
    score = consensus_score(labels, [1, 2, 3], "dice_mean")
    assert score.per_class[1] == pytest.approx(sum(dsc) / 3)   # 23/30
    assert score.per_class[3] == 1.0
    assert score.per_class[2] == 1.0 and score.present == (1, 3) and score.absent == (2,)
    assert score.volume == pytest.approx((23 / 30 + 1.0) / 2)  # absent class 2 left out
    # majority (>= 2 votes) of class 1 = [1 1 0]: IoU m0 = 2/2, m1 = 1/2, m2 = 2/3
    paper = consensus_score(labels, [1, 2, 3], variant="paper_iou_majority")
    assert paper.per_class[1] == pytest.approx((1 + 1 / 2 + 2 / 3) / 3)
    assert paper.volume == pytest.approx(((1 + 1 / 2 + 2 / 3) / 3 + 1.0) / 2)


@pytest.mark.parametrize("variant", VARIANTS)
def test_identical_members_score_one_and_empty_case_zero(variant):
    rng = np.random.default_rng(0)
    one = rng.integers(0, 4, (5, 8, 9)).astype(np.uint8)
    score = consensus_score(np.stack([one] * 3), [1, 2, 3, 4], variant=variant)
    assert score.volume == 1.0 and score.present == (1, 2, 3) and score.absent == (4,)
    empty = consensus_score(np.zeros((2, 3, 4, 4), np.uint8), [1, 2], variant=variant)
    assert empty.volume == 0.0 and empty.present == () and empty.per_class == {1: 1.0, 2: 1.0}


def test_fused_dice_3d_is_each_members_dice_against_the_written_label():
    # class 1 over two slices. m0: 3 voxels, m1: 2, m2: 1; votes per voxel below
    m0 = [[[1, 1, 0]], [[1, 0, 0]]]
    m1 = [[[1, 0, 0]], [[1, 0, 0]]]
    m2 = [[[0, 0, 0]], [[1, 0, 0]]]
    labels = members(m0, m1, m2)
    fused = fuse_members(labels, 2)       # [1 0 0] on both slices (voxel 1 of slice 0: 1 vs 2)
    assert fused.tolist() == [[[1, 0, 0]], [[1, 0, 0]]]
    # |F| = 2. m0: 2*2/(3+2); m1: 2*2/(2+2); m2: 2*1/(1+2)
    expected = (4 / 5 + 1 + 2 / 3) / 3
    score = consensus_score(labels, [1, 2], "fused_dice_3d")
    assert score.variant == "fused_dice_3d" and score.per_class[1] == pytest.approx(expected)
    assert score.present == (1,) and score.per_class[2] == 1.0
    assert score.volume == pytest.approx(expected)
    # a class only one member has loses every vote: |F| = 0, that member scores 0, others 1
    m0[0][0][2] = 2
    lone = consensus_score(members(m0, m1, m2), [1, 2], "fused_dice_3d")
    assert lone.per_class[2] == pytest.approx(2 / 3) and lone.present == (1, 2)


def test_fused_dice_3d_matches_a_plain_computation():
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 4, (5, 6, 7, 8)).astype(np.uint8)
    labels[:, :, :2] = 0
    fused = fuse_members(labels, 4)
    score = consensus_score(labels, [1, 2, 3], "fused_dice_3d")
    for c in (1, 2, 3):
        dice = [2 * ((m == c) & (fused == c)).sum() / ((m == c).sum() + (fused == c).sum())
                for m in labels]
        assert score.per_class[c] == pytest.approx(np.mean(dice))


def test_unanimous_iou_3d_by_hand_and_default():
    # class 1 over two slices: m0 = 3 voxels, m1 = 2, m2 = 1; all three agree on 1 voxel
    # (slice 1, voxel 0), some member has it on 3 voxels -> 1/3
    m0 = [[[1, 1, 0]], [[1, 0, 0]]]
    m1 = [[[1, 0, 0]], [[1, 0, 0]]]
    m2 = [[[0, 0, 0]], [[1, 0, 0]]]
    score = consensus_score(members(m0, m1, m2), [1, 2])
    assert DEFAULT_VARIANT == "unanimous_iou_3d" and score.variant == DEFAULT_VARIANT
    assert score.per_class[1] == pytest.approx(1 / 3) and score.present == (1,)
    assert score.volume == pytest.approx(1 / 3)
    # two members: their 3D IoU (intersection 2, union 3)
    assert consensus_score(members(m0, m1), [1]).volume == pytest.approx(2 / 3)


@pytest.mark.parametrize("m_count", [2, 3, 4, 6])
def test_unanimous_scores_match_a_plain_computation(m_count):
    rng = np.random.default_rng(m_count)
    labels = rng.integers(0, 3, (m_count, 4, 6, 5)).astype(np.uint8)
    labels[1:] = np.where(rng.random(labels[1:].shape) < 0.3, labels[1:], labels[:1])
    iou = consensus_score(labels, [1, 2, 3], "unanimous_iou_3d")
    dice = consensus_score(labels, [1, 2, 3], "unanimous_dice_3d")
    for c in (1, 2):
        masks = labels == c
        inter, union = masks.all(0).sum(), masks.any(0).sum()
        assert iou.per_class[c] == pytest.approx(inter / union)
        # the Dice of the members' intersection and union masks
        assert dice.per_class[c] == pytest.approx(2 * inter / (inter + union))
    for score in (iou, dice):
        assert score.present == (1, 2) and score.per_class[3] == 1.0


def test_unanimous_dice_3d_of_two_members_is_their_dice():
    rng = np.random.default_rng(5)
    labels = (rng.random((2, 5, 9, 9)) < 0.4).astype(np.uint8)
    a, b = labels == 1
    expected = 2 * (a & b).sum() / (a.sum() + b.sum())
    assert consensus_score(labels, [1], "unanimous_dice_3d").volume == pytest.approx(expected)


def test_a_lone_speck_is_no_agreement():
    # members agree on class 1; one member adds a 1-voxel speck of class 2. fused_dice_3d scores
    # the speck class (M - 1) / M, as if well agreed (the empty masks "agree" with the empty
    # fused label); unanimous_iou_3d scores it 0
    labels = np.zeros((4, 3, 8, 8), np.uint8)
    labels[:, 1, 2:6, 2:6] = 1
    labels[1:, 1, 2:6, 5] = 0                      # three members miss a column: IoU 12/16
    speck = labels.copy()
    speck[0, 0, 0, 0] = 2
    assert consensus_score(speck, [1, 2], "fused_dice_3d").per_class[2] == pytest.approx(3 / 4)
    plain, specked = (consensus_score(x, [1, 2]) for x in (labels, speck))
    assert plain.volume == pytest.approx(12 / 16) and specked.per_class[2] == 0.0
    assert specked.volume == pytest.approx((12 / 16 + 0) / 2)


def test_noisier_members_score_lower():
    # the same organ; members flip more and more voxels at random: every variant's volume score
    # falls with the flip rate (a noisier member set scores lower)
    rng = np.random.default_rng(0)
    truth = np.zeros((6, 24, 24), np.uint8)
    truth[1:5, 6:18, 6:18] = 1
    for variant in VARIANTS:
        scores = []
        for rate in (0.0, 0.02, 0.08, 0.2):
            flips = rng.random((3, *truth.shape)) < rate
            scores.append(consensus_score(np.where(flips, 1 - truth, truth).astype(np.uint8),
                                          [1], variant).volume)
        assert scores[0] == 1.0 and scores == sorted(scores, reverse=True), variant


def test_disagreement_lowers_the_score():
    base = np.zeros((4, 16, 16), np.uint8)
    base[:, 4:12, 4:12] = 1
    for shift in (0, 1, 2, 4):
        moved = np.roll(base, shift, axis=2)
        # per slice: overlap o = (8 - shift) * 8; both members give 2 (o + (64 - o) / 2) / 128
        overlap = (8 - shift) * 8
        expected = (overlap + 64) / 128
        pair = np.stack([base, moved])
        assert consensus_score(pair, [1], "dice_mean").volume == pytest.approx(expected)
        # fused (ties -> member 0) = base: 3D Dice of base 1, of moved (8 - shift) / 8
        fused_dice = consensus_score(pair, [1], "fused_dice_3d").volume
        assert fused_dice == pytest.approx((1 + (8 - shift) / 8) / 2)


def test_chunked_counting_matches_one_chunk(monkeypatch):
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 5, (4, 7, 6, 5)).astype(np.uint8)
    variants = VARIANTS
    whole = [consensus_score(labels, [1, 2, 3, 4], v) for v in variants]
    fused = fuse_members(labels, 5)
    monkeypatch.setattr(consensus_module, "_CHUNK_VOXELS", 1)    # one slice per chunk
    for expected, v in zip(whole, variants, strict=True):
        assert consensus_score(labels, [1, 2, 3, 4], v) == expected
    assert np.array_equal(fuse_members(labels, 5), fused)


def test_to_dict_round_trip_through_json():
    labels = members([[[1, 2, 0]]], [[[1, 0, 0]]])
    score = consensus_score(labels, [1, 2, 3])
    back = ConsensusScore.from_dict(json.loads(json.dumps(score.to_dict())))
    assert back == score and back.absent == (3,)


def test_fuse_members_majority_and_ties():
    # voxels: [2 1 1] -> 1; tie 1 vs 2 (M=2) -> member 0's label; [0 3 3 0] tie -> member 0 (0)
    assert fuse_members(members([[[2, 1]]], [[[1, 2]]], [[[1, 2]]]), 3).tolist() == [[[1, 2]]]
    assert fuse_members(members([[[1, 2]]], [[[2, 1]]]), 3).tolist() == [[[1, 2]]]
    four = members([[[0, 3]]], [[[3, 0]]], [[[3, 0]]], [[[0, 3]]])
    assert fuse_members(four, 4).tolist() == [[[0, 3]]]


def test_fuse_members_matches_a_plain_vote():
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 3, (4, 3, 5, 5)).astype(np.uint8)
    fused = fuse_members(labels, 3)
    for idx in np.ndindex(labels.shape[1:]):
        votes = Counter(labels[(slice(None), *idx)].tolist())
        best = max(votes.values())
        first = next(int(v) for v in labels[(slice(None), *idx)] if votes[int(v)] == best)
        assert fused[idx] == first


def test_bad_input():
    with pytest.raises(ValueError, match="at least 2 members"):
        consensus_score(np.zeros((1, 2, 2, 2), np.uint8), [1])
    with pytest.raises(ValueError, match="uint8"):
        consensus_score(np.zeros((2, 2, 2, 2), np.int32), [1])
    with pytest.raises(InputError, match="unknown consensus variant"):
        consensus_score(np.zeros((2, 2, 2, 2), np.uint8), [1], variant="iou")
    with pytest.raises(ValueError, match="num_classes"):
        fuse_members(np.full((2, 1, 2, 2), 5, np.uint8), 4)
