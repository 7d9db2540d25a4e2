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
