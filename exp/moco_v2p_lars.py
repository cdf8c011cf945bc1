# MoCo v2+ with LARS (lr per 256 by schedule length: 0.3 at 200/300 epochs, 0.45 at 100,
# set in fastairl/config.py as the reference does; --set lr= wins), wd 1e-6,
# all-gather ("plain") SyncBN in both encoders. The reference crashes here (BN kind given
# as a plain string); fastairl takes a per-encoder kind.
CONFIG = dict(
    method="moco", recipe="moco_plus",
    head="mlp_bn", dim=256, hidden_dim=4096, predictor=True, last_bias=True,
    online_bn="plainsync", target_bn="plainsync", shuffle_bn=False,
    symmetric=True, temperature=0.2, queue_size=65536,
    momentum_base=0.99, momentum_schedule="cosine",
    optimizer="lars", lr=0.3, weight_decay=1e-6, lars_eta=0.001, schedule="warmcos", warmup_epochs=10,
    epochs=200, batch_size=256,
    probe=True, probe_lr=0.2, probe_schedule="cosine",
)
