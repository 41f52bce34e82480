"""The local pipeline: a run plan as checked notebook jobs, run with papermill, incrementally."""
