"""lora-study: compile, run and compare parallel strategies (see cli.py)."""
