"""Evaluation metrics: DSC and NSD with the FLARE rules, and the efficiency meter."""

from slicevos.metrics.efficiency import EfficiencyMeter
from slicevos.metrics.flare import (
    ClassScore,
    evaluate_case,
    evaluate_folders,
    match_cases,
    score_case,
    summarise,
    write_results,
)
from slicevos.metrics.overlap import dice, dice_per_class
from slicevos.metrics.surface import normalized_surface_dice

__all__ = [
    "ClassScore",
    "EfficiencyMeter",
    "dice",
    "dice_per_class",
    "evaluate_case",
    "evaluate_folders",
    "match_cases",
    "normalized_surface_dice",
    "score_case",
    "summarise",
    "write_results",
]
