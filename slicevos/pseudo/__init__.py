"""Pseudo-labeling: consensus score of several members' predictions, filtering of the
pseudo-labeled cases into the next round's dataset folder (see docs/pseudo_labels.md)."""

from slicevos.pseudo.consensus import VARIANTS, ConsensusScore, consensus_score, fuse_members
from slicevos.pseudo.dataset_writer import write_accepted_dataset
from slicevos.pseudo.filtering import Decision, FilterConfig, select_cases, volume_cutoff
from slicevos.pseudo.folder import CaseRecord, CaseScore, read_case_record, score_pseudo_folder

__all__ = [
    "VARIANTS", "CaseRecord", "CaseScore", "ConsensusScore", "Decision", "FilterConfig",
    "consensus_score", "fuse_members", "read_case_record", "score_pseudo_folder", "select_cases",
    "volume_cutoff", "write_accepted_dataset",
]
