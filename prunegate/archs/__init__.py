"""Network definitions for common public checkpoints, usable as a policy's `arch`."""
