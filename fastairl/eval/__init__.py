"""Evaluation of a frozen backbone: kNN (``knn``) and the linear protocol (``linear``, on the
shared run loop), with what both need: which encoder of a checkpoint (``encoders``), their
common flags (``flags``) and where image size, arch and schedule come from (``scale``).
The commands keep their names: ``python -m fastairl.knn`` and ``python -m fastairl.linear_eval``.
Nothing is imported here, so importing one module does not load the others."""
