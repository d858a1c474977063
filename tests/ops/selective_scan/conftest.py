"""Fixtures of the selective-scan conformance suite (the shared definitions are in scan_cases.py)."""
from __future__ import annotations

import op_targets
from scan_cases import TARGETS

# target: every compiled variant; cxx_target: cpu per ISA and cuda; any_target: the reference too.
target, cxx_target, any_target = op_targets.target_fixtures(TARGETS)
