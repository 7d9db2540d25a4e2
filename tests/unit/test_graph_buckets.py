"""How served batches map onto captured CUDA graph shapes: rows to a power of two, width to a multiple of 16,
padding rows that attend only to their first token."""

from __future__ import annotations

import numpy as np
import pytest

from finetune_platform.inference.graphs import bucket_of, pad_to_bucket, row_buckets, width_buckets


def test_row_buckets_are_powers_of_two_up_to_the_first_that_holds_the_batch():
    assert row_buckets(64) == [1, 2, 4, 8, 16, 32, 64]
    assert row_buckets(100) == [1, 2, 4, 8, 16, 32, 64, 128]
    assert row_buckets(1) == [1]


def test_width_buckets_are_multiples_of_16_up_to_the_max_length():
    assert width_buckets(128) == [16, 32, 48, 64, 80, 96, 112, 128]
    assert width_buckets(20) == [16, 32]
    assert width_buckets(16) == [16]


def test_a_batch_takes_the_smallest_bucket_that_holds_it():
    assert bucket_of(1, [1, 2, 4]) == 1
    assert bucket_of(3, [1, 2, 4]) == 4
    assert bucket_of(17, [16, 32]) == 32
    with pytest.raises(ValueError, match=r"^5 is larger than the largest bucket \(4\)$"):
        bucket_of(5, [1, 2, 4])


def test_padding_keeps_the_rows_and_gives_padding_rows_one_token_to_attend_to():
    ids = np.array([[101, 7, 102], [101, 102, 0]])
    mask = np.array([[1, 1, 1], [1, 1, 0]])
    padded_ids, padded_mask = pad_to_bucket(ids, mask, rows=4, width=5, pad_id=0)
    assert padded_ids.tolist() == [[101, 7, 102, 0, 0], [101, 102, 0, 0, 0], [0] * 5, [0] * 5]
    assert padded_mask.tolist() == [[1, 1, 1, 0, 0], [1, 1, 0, 0, 0], [1, 0, 0, 0, 0], [1, 0, 0, 0, 0]]
    assert padded_ids.dtype == padded_mask.dtype == np.int64
