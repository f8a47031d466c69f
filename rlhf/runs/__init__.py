"""A run's records on disk: stage folders and their markers, `run_info.json`, the tracker,
checkpoint discovery for resume, and the fault points the resume tests kill at."""
