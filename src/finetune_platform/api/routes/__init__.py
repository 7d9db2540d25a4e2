"""One router per resource; ``app.create_app`` includes them in this order."""

from __future__ import annotations

from finetune_platform.api.routes import (
    audit,
    auth,
    datasets,
    experiments,
    jobs,
    models,
    ops,
    predictions,
    sweeps,
    users,
)

ROUTERS = (
    auth.router,
    users.router,
    datasets.router,
    ops.router,
    jobs.router,
    predictions.router,
    sweeps.router,
    experiments.router,
    models.router,
    audit.router,
)
