"""The confusion matrix a tracked run logs: each cell shaded by its count, the largest darkest, an empty one white."""

from __future__ import annotations

from PIL import Image

from finetune_platform.tracking.plots import CELL_MOST, confusion_matrix_png


def test_each_cell_is_shaded_by_its_count(tmp_path):
    confusion = {"labels": ["negative", "positive"], "matrix": [[40, 0], [20, 30]]}
    image = Image.open(confusion_matrix_png(confusion, tmp_path / "cm.png")).convert("RGB")
    margin, top = 120, 30  # label room on the left, the title above

    def corner(row: int, column: int) -> tuple[int, int, int]:  # a cell's pixel clear of its count's text
        return image.getpixel((margin + column * CELL_MOST + CELL_MOST - 3, top + row * CELL_MOST + 2))

    assert corner(0, 0) == (8, 48, 107)  # 40, the largest
    assert corner(0, 1) == (247, 251, 255)  # 0
    assert corner(1, 0) == (128, 150, 181)  # 20: half way
    assert image.size == (margin + 2 * CELL_MOST + 20, top + 2 * CELL_MOST + 30)


def test_many_labels_stay_a_bounded_image(tmp_path):
    labels = [f"class-{i}" for i in range(500)]
    matrix = [[1 if i == j else 0 for j in range(500)] for i in range(500)]
    image = Image.open(confusion_matrix_png({"labels": labels, "matrix": matrix}, tmp_path / "cm.png"))
    assert image.size == (40 + 4 * 500 + 20, 30 + 4 * 500 + 30)  # 4-pixel cells, no names


def test_more_labels_than_can_be_drawn_says_so(tmp_path):
    labels = [str(i) for i in range(1001)]
    matrix = [[0] * 1001 for _ in range(1001)]
    image = Image.open(confusion_matrix_png({"labels": labels, "matrix": matrix}, tmp_path / "cm.png"))
    assert image.size == (480, 60)
