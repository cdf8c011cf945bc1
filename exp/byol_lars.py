# BYOL with LARS (lr per 256 by schedule length: 0.3 at 200/300 epochs, 0.45 at 100, set in
# fastairl/config.py as the reference does; --set lr= wins), wd 1e-6, SyncBN.
CONFIG = dict(
    method="byol", recipe="byol_asym",
    head="mlp_bn", dim=256, hidden_dim=4096, predictor=True, last_bias=True,
    online_bn="syncbn", target_bn="syncbn",
    momentum_base=0.99, momentum_schedule="cosine",
    optimizer="lars", lr=0.3, weight_decay=1e-6, lars_eta=0.001, schedule="warmcos", warmup_epochs=10,
    epochs=200, batch_size=256,
    probe=True, probe_lr=0.2, probe_schedule="cosine",
)
