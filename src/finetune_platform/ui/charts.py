"""The job page's charts as Vega-Lite specs over rows of GET /task/{id}/metrics: curves whose every value is a
point (one evaluation is a visible point, not an empty chart) over whole-number steps, and the confusion matrix
as a heatmap with its counts."""

from __future__ import annotations

from typing import Any

# Optimizer steps are whole numbers: no "188.000000" labels, no ticks between two steps.
STEP_AXIS = {
    "field": "step",
    "type": "quantitative",
    "title": "step",
    "axis": {"format": "d", "tickMinStep": 1},
}


def curve_rows(points: list[dict[str, Any]], fields: dict[str, str]) -> list[dict[str, Any]]:
    """Long-format rows ``{step, metric, value}``: each of ``fields`` (a key of the points: the name shown) at
    each point where it has a value."""
    return [
        {"step": point["step"], "metric": shown, "value": point[key]}
        for point in points
        for key, shown in fields.items()
        if point.get(key) is not None
    ]


def curves_spec(y_title: str) -> dict[str, Any]:
    """Lines through points, one colour per metric, steps as whole numbers."""
    return {
        "mark": {"type": "line", "point": {"filled": True, "size": 64}, "tooltip": True},
        "encoding": {
            "x": STEP_AXIS,
            "y": {
                "field": "value",
                "type": "quantitative",
                "title": y_title,
                "scale": {"zero": False},
                "axis": {"format": "~g"},  # 0.695, not 0.695000
            },
            "color": {"field": "metric", "type": "nominal", "title": None},
        },
    }


def confusion_rows(confusion: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per (true, predicted) cell of ``{labels, matrix}`` (rows of the matrix are the true labels)."""
    labels = confusion["labels"]
    return [
        {"actual": labels[i], "predicted": labels[j], "count": count}
        for i, row in enumerate(confusion["matrix"])
        for j, count in enumerate(row)
    ]


def confusion_spec(confusion: dict[str, Any]) -> dict[str, Any]:
    """A heatmap, true labels down and predicted ones across, each cell with its count."""
    labels = confusion["labels"]
    peak = max((count for row in confusion["matrix"] for count in row), default=0)
    x = {"field": "predicted", "type": "nominal", "sort": labels, "title": "predicted label"}
    y = {"field": "actual", "type": "nominal", "sort": labels, "title": "true label"}
    return {
        "height": {"step": 48},  # one band per label, tall enough to read its count
        "layer": [
            {
                "mark": "rect",
                "encoding": {
                    "x": x, "y": y,
                    "color": {"field": "count", "type": "quantitative", "scale": {"scheme": "blues"}, "title": "rows"},
                },
            },
            {
                "mark": {"type": "text", "fontSize": 14},
                "encoding": {
                    "x": x, "y": y,
                    "text": {"field": "count", "type": "quantitative"},
                    "color": {"condition": {"test": f"datum.count > {peak / 2}", "value": "white"}, "value": "black"},
                },
            },
        ]
    }  # fmt: skip


# -- a sweep's charts, over its trials (GET /sweeps/{id}: trial_list) -----------------------------------------
TRIAL_AXIS = {
    "field": "trial",
    "type": "quantitative",
    "title": "trial",
    "axis": {"format": "d", "tickMinStep": 1},
}
# Each trial state keeps its colour and shape in every chart; a pruned trial is a hollow cross.
TRIAL_STATES = ("succeeded", "pruned", "running", "failed", "cancelled", "queued")
STATE_COLOURS = ("#1f77b4", "#d62728", "#ff7f0e", "#7f7f7f", "#bcbd22", "#17becf")
STATE_SHAPES = ("circle", "cross", "diamond", "square", "triangle-down", "triangle-up")


def best_so_far(trials: list[dict[str, Any]], direction: str) -> list[float | None]:
    """For each trial (by number), the best value of the completed trials up to it (None before the first)."""
    pick = max if direction == "maximize" else min
    best: float | None = None
    found = []
    for trial in trials:
        if trial["status"] == "succeeded" and trial["value"] is not None:
            best = trial["value"] if best is None else pick(best, trial["value"])
        found.append(best)
    return found


def trial_rows(trials: list[dict[str, Any]], direction: str) -> list[dict[str, Any]]:
    """One row per trial that has a value: ``{trial, state, value, best}``, ``best`` the best-so-far; a pruned
    or running trial's value is its latest evaluation's."""
    ordered = sorted(trials, key=lambda trial: trial["number"])
    return [
        {"trial": trial["number"], "state": trial["status"], "value": trial["value"], "best": best}
        for trial, best in zip(ordered, best_so_far(ordered, direction), strict=True)
        if trial["value"] is not None
    ]


def _state_encoding() -> dict[str, Any]:
    def by_state(palette: tuple[str, ...]) -> dict[str, Any]:
        scale = {"domain": list(TRIAL_STATES), "range": list(palette)}
        return {"field": "state", "type": "nominal", "title": "trial", "scale": scale}

    return {"color": by_state(STATE_COLOURS), "shape": by_state(STATE_SHAPES)}


def trials_spec(objective: str) -> dict[str, Any]:
    """The objective by trial number, a point per trial coloured and shaped by its state, and the best-so-far
    as a step line."""
    y = {"type": "quantitative", "title": objective, "scale": {"zero": False}, "axis": {"format": "~g"}}
    return {
        "layer": [
            {
                "mark": {"type": "line", "interpolate": "step-after", "color": "#2ca02c"},
                "encoding": {"x": TRIAL_AXIS, "y": {**y, "field": "best"}},
            },
            {
                "mark": {"type": "point", "filled": True, "size": 80, "tooltip": True},
                "encoding": {"x": TRIAL_AXIS, "y": {**y, "field": "value"}, **_state_encoding()},
            },
        ]
    }


def param_rows(trials: list[dict[str, Any]], param: str) -> list[dict[str, Any]]:
    """``{value of param, objective, state, trial}`` for each trial that tried ``param`` and has a value.
    Lists (target_modules) are shown as their text."""
    return [
        {
            "param": ", ".join(map(str, raw)) if isinstance(raw := trial["params"][param], list) else raw,
            "objective": trial["value"],
            "state": trial["status"],
            "trial": trial["number"],
        }
        for trial in trials
        if param in trial["params"] and trial["value"] is not None
    ]


def param_spec(
    param: str, objective: str, rows: list[dict[str, Any]], log_scale: bool = False
) -> dict[str, Any]:
    """One searched parameter against the objective; a numeric one on a (log) scale, a choice as bands."""
    numeric = all(
        isinstance(row["param"], int | float) and not isinstance(row["param"], bool) for row in rows
    )
    x: dict[str, Any] = {"field": "param", "title": param}
    if numeric:
        x.update(type="quantitative", scale={"type": "log"} if log_scale else {"zero": False})
    else:
        x.update(type="nominal")
    return {
        "mark": {"type": "point", "filled": True, "size": 80, "tooltip": True},
        "encoding": {
            "x": x,
            "y": {"field": "objective", "type": "quantitative", "title": objective, "scale": {"zero": False}},
            **_state_encoding(),
        },
    }
