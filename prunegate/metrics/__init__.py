from .tally import TaskTally

__all__ = ["TaskTally"]
