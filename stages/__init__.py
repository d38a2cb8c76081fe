"""vidcurate stages: pure functions for the math plus one small class per Ray stage."""
