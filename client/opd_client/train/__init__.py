"""The OPD trainer (behind the `train` extra): its CLI `opd-train` and, as it grows,
rollouts, the step, the loop and checkpoints."""
