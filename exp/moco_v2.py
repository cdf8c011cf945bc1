# MoCo v2: as v1 with a Linear-ReLU-Linear head (2048->2048->128), T=0.2, moco_plus, warmcos.
CONFIG = dict(
    method="moco", recipe="moco_plus",
    head="mlp", dim=128, hidden_dim=2048, predictor=False, last_bias=True,
    online_bn="bn", target_bn="bn", shuffle_bn=True,
    symmetric=False, temperature=0.2, queue_size=65536,
    momentum_base=0.999, momentum_schedule="fixed",
    optimizer="sgd", lr=0.03, weight_decay=1e-4, schedule="warmcos", warmup_epochs=10,
    epochs=200, batch_size=256,
    probe=True, probe_lr=30.0, probe_schedule="multistep_epochs", probe_milestones=(60, 80),
)
