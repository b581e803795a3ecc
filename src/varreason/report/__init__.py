"""What a run or a comparison shows: the run's report.md and plots (`run_report.py`) and the accuracy-bias
diagnostic (`bias.py`: the weight each method puts on a question against its difficulty)."""
