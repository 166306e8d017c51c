"""Jobs: submit, queue state, logs, cancel, fetch, sweeps."""
