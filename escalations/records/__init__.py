"""Records of cases: the partnerships' forms, exports, reports, the learning log and retention."""
