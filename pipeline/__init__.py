"""vidcurate orchestration: job spec, plan, writers and the command line."""

__version__ = "0.1.0"
