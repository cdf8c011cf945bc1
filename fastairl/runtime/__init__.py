"""The bottom layer: what every task and tool needs about the process it runs in, with no
knowledge of data, models or methods: device and AMP choice (device), the user-error type
(errors), the process group and its gathers (distributed), the run folder (run_folder), stop
signals (stop_signals), console/TensorBoard logging (logging_utils), CLI helpers (cli_util),
the one atomic writer (atomic_io) and the one run loop (loop)."""
