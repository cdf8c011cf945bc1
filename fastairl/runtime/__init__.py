"""The bottom layer: what every task and tool needs about the process it runs in (device,
AMP, the user-error type), with no knowledge of data, models or methods."""
