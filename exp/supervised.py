# Supervised baseline: cross-entropy, one view, Linear 2048->classes, SGD 0.1, warmcos,
# validation every eval_every epochs.
CONFIG = dict(
    method="supervised", recipe="supervised",
    online_bn="bn",
    optimizer="sgd", lr=0.1, weight_decay=1e-4, schedule="warmcos", warmup_epochs=10,
    # REFERENCE.md gives no epoch count for this baseline; 100 is the usual ImageNet setting.
    epochs=100, batch_size=256,
    probe=False, eval_every=10,
)
