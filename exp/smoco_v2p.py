# S-MoCo v2+: as MoCo v2+, but the last Linear of projector and predictor have no bias, and
# the target encoder is a full copy of the online one, predictor included (its checkpoint
# layout holds target_encoder.fc.4/5/7), so both branches are symmetric.
CONFIG = dict(
    method="moco", recipe="moco_plus",
    head="mlp_bn", dim=256, hidden_dim=4096, predictor=True, last_bias=False, target_predictor=True,
    online_bn="syncbn", target_bn="syncbn", shuffle_bn=False,
    symmetric=True, temperature=0.2, queue_size=65536,
    momentum_base=0.99, momentum_schedule="cosine",
    optimizer="sgd", lr=0.03, weight_decay=1e-4, schedule="warmcos", warmup_epochs=10,
    epochs=200, batch_size=256,
    probe=True, probe_lr=30.0, probe_schedule="multistep_epochs", probe_milestones=(60, 80),
)
