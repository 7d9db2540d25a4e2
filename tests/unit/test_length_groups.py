"""How texts are cut into forward passes: by length, a new pass when padding would grow too much."""

from __future__ import annotations

from finetune_platform.inference.predictor import length_groups


def test_similar_lengths_share_a_pass_and_outliers_get_their_own():
    lengths = [10, 60, 11, 12, 10, 59]
    assert length_groups(lengths, most=64, padding_budget=12) == [[0, 4, 2, 3], [5, 1]]


def test_a_pass_holds_at_most_the_batch_size_and_every_text_once():
    lengths = [5] * 10
    groups = length_groups(lengths, most=4, padding_budget=12)
    assert groups == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]


def test_the_budget_counts_padding_added_to_every_text_already_in_the_pass():
    # joining a 3-text pass of length 10 with length 14 adds 3 × 4 = 12 padding tokens: allowed;
    # length 15 would add 15: a new pass
    assert length_groups([10, 10, 10, 14], most=64, padding_budget=12) == [[0, 1, 2, 3]]
    assert length_groups([10, 10, 10, 15], most=64, padding_budget=12) == [[0, 1, 2], [3]]


def test_no_texts_no_passes():
    assert length_groups([], most=8, padding_budget=12) == []
