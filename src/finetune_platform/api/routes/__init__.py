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
    users,
)

ROUTERS = (
    auth.router,
    users.router,
    datasets.router,
    ops.router,
    jobs.router,
    predictions.router,
    experiments.router,
    models.router,
    audit.router,
)
