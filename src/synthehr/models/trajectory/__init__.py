"""Whole-patient trajectory generation over coded MEDS events.

tokenizer (MEDS ⇄ tokens) · vocabulary with code hierarchy · decoder-only transformer with KV cache ·
record grammar that masks sampling so every record is structurally valid · TrajectoryGenerator
(fit / sample / condition / save / load) · structural validity checks on MEDS events.
"""

from synthehr.models.trajectory.generator import TrajectoryGenerator, is_trajectory_model
from synthehr.models.trajectory.grammar import Grammar
from synthehr.models.trajectory.tokenizer import Encoded, Tokenizer
from synthehr.models.trajectory.validity import check_records, validity_rate
from synthehr.models.trajectory.vocab import Vocabulary, build_vocabulary

__all__ = ["Encoded", "Grammar", "Tokenizer", "TrajectoryGenerator", "Vocabulary", "build_vocabulary", "check_records",
           "is_trajectory_model", "validity_rate"]
