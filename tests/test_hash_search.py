"""HashSearch finds exactly what comparing every stored hash finds, in the same order, on random sets and on the sets
that defeat lookups by word: duplicates, shared word values, distances exactly at the threshold, tiny and empty sets.
Every test runs with numpy's popcount and with the unpacked bits that numpy < 2 counts instead."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import SHARED_DATA
from wildvision import hash_search
from wildvision.hash_search import HashSearch, scan_within
from wildvision.hashing import PDQ_MATCH_DISTANCE, pdq_available

DISTANCES = (-1, 0, 1, 15, 16, 30, 31, 32, 47, 48, 100, 256)


@pytest.fixture(autouse=True, params=["bitwise_count", "unpacked bits"])
def popcount(request, monkeypatch):
    if request.param == "bitwise_count" and hash_search._bit_count is None:
        pytest.skip("numpy < 2 has no bitwise_count")
    if request.param == "unpacked bits":
        monkeypatch.setattr(hash_search, "_bit_count", None)
    return request.param


def expected(hashes: np.ndarray, queries: np.ndarray, max_distance: int) -> list[tuple[list[int], list[int]]]:
    """Every stored row within the distance, nearest first, ties by row: by unpacking bits, independent of both
    implementations."""
    bits = np.unpackbits(hashes, axis=1)
    answers = []
    for query in np.unpackbits(queries.reshape(-1, 32), axis=1):
        distances = (bits != query).sum(axis=1)
        rows = sorted(np.flatnonzero(distances <= max_distance).tolist(), key=lambda row: (distances[row], row))
        answers.append((rows, [int(distances[row]) for row in rows]))
    return answers


def assert_exact(hashes: np.ndarray, queries: np.ndarray, distances=DISTANCES) -> None:
    search = HashSearch(hashes)
    for max_distance in distances:
        found = search.within(queries, max_distance)
        assert [(rows.tolist(), kept.tolist()) for rows, kept in found] == expected(hashes, queries, max_distance), \
            max_distance
        assert all(rows.dtype == np.int64 and kept.dtype == np.int32 for rows, kept in found)


def flipped(hashes: np.ndarray, bits: list[int]) -> np.ndarray:
    """Each hash with the given bit positions (0-255) flipped."""
    unpacked = np.unpackbits(np.atleast_2d(hashes), axis=1)
    unpacked[:, bits] ^= 1
    return np.packbits(unpacked, axis=1)


def near(rng: np.random.Generator, hashes: np.ndarray, bits: int) -> np.ndarray:
    return flipped(hashes, rng.choice(256, bits, replace=False).tolist())


def test_random_hashes_and_queries_near_them_agree_with_a_full_comparison():
    rng = np.random.default_rng(0)
    hashes = rng.integers(0, 256, (3000, 32), dtype=np.uint8)
    queries = np.concatenate([near(rng, hashes[row], bits) for row, bits in zip(rng.integers(0, 3000, 40),
                                                                                 range(0, 80, 2))])
    assert_exact(hashes, queries)
    assert_exact(hashes, rng.integers(0, 256, (5, 32), dtype=np.uint8))


def test_more_queries_than_one_pass_takes_answer_each_in_its_place():
    rng = np.random.default_rng(1)
    hashes = rng.integers(0, 256, (500, 32), dtype=np.uint8)
    queries = np.concatenate([near(rng, hashes[row], 20) for row in range(3 * hash_search._QUERIES_PER_PASS + 5)])
    assert_exact(hashes, queries, (PDQ_MATCH_DISTANCE,))


def test_31_bits_with_only_one_word_within_one_bit_is_found_and_32_bits_is_not():
    # 2 bits in each of 15 words and 1 in the last: the pigeonhole's tightest case at distance 31
    rng = np.random.default_rng(2)
    stored = rng.integers(0, 256, (1, 32), dtype=np.uint8)
    in_words = [bit for word in range(15) for bit in (16 * word, 16 * word + 9)] + [16 * 15 + 3]
    at_31 = flipped(stored, in_words)
    at_32 = flipped(stored, in_words + [16 * 15 + 12])  # 2 bits in every word
    hashes = np.concatenate([rng.integers(0, 256, (200, 32), dtype=np.uint8), stored])
    found = HashSearch(hashes).within(np.concatenate([at_31, at_32]), PDQ_MATCH_DISTANCE)
    assert (found[0][0].tolist(), found[0][1].tolist()) == ([200], [31])
    assert 200 not in found[1][0]
    assert_exact(hashes, np.concatenate([at_31, at_32]))


def test_duplicates_are_all_found_ties_in_row_order():
    rng = np.random.default_rng(3)
    item = rng.integers(0, 256, (1, 32), dtype=np.uint8)
    hashes = np.concatenate([rng.integers(0, 256, (100, 32), dtype=np.uint8), np.repeat(item, 50, axis=0),
                             near(rng, item, 5), np.repeat(item, 3, axis=0)])
    rows, distances = HashSearch(hashes).within(item, PDQ_MATCH_DISTANCE)[0]
    assert rows.tolist() == [*range(100, 150), *range(151, 154), 150]
    assert distances.tolist() == [0] * 53 + [5]
    assert_exact(hashes, np.concatenate([item, near(rng, item, 31)]))


def test_a_set_whose_hashes_share_every_word_value_is_scanned_and_agrees(monkeypatch):
    # Flat photos' PDQ repeat words such as 0x3333: here every stored word is 0x3333 or one bit from it, so looking up
    # a query like them would read every row sixteen times over; the search scans instead.
    rng = np.random.default_rng(4)
    hashes = np.full((400, 32), 0x33, np.uint8)
    for row in hashes:
        row[rng.integers(0, 32)] ^= 1 << rng.integers(0, 8)
    queries = np.concatenate([hashes[:3], near(rng, hashes[0], 31), rng.integers(0, 256, (2, 32), dtype=np.uint8)])
    scans = []
    monkeypatch.setattr(hash_search, "scan_within", lambda *args: scans.append(args) or scan_within(*args))
    assert_exact(hashes, queries, (0, 15, 16, PDQ_MATCH_DISTANCE, 47))  # below 48, where every query is scanned
    assert scans, "the queries like every row were scanned"


def test_far_distances_agree_by_scanning():
    rng = np.random.default_rng(5)
    hashes = rng.integers(0, 256, (300, 32), dtype=np.uint8)
    queries = near(rng, hashes[:4], 60)
    assert_exact(hashes, queries, (47, 48, 64, 128, 255, 256))


def test_an_empty_set_finds_nothing_for_each_query():
    found = HashSearch(np.zeros((0, 32), np.uint8)).within(np.zeros((3, 32), np.uint8), PDQ_MATCH_DISTANCE)
    assert [(rows.tolist(), distances.tolist()) for rows, distances in found] == [([], [])] * 3
    assert len(HashSearch(np.zeros((0, 32), np.uint8))) == 0
    assert_exact(np.zeros((0, 32), np.uint8), np.zeros((2, 32), np.uint8))


def test_no_queries_give_no_answers():
    rng = np.random.default_rng(6)
    assert HashSearch(rng.integers(0, 256, (10, 32), dtype=np.uint8)).within(np.zeros((0, 32), np.uint8), 31) == []


def test_one_item_and_one_query_as_32_bytes():
    rng = np.random.default_rng(7)
    item = rng.integers(0, 256, (1, 32), dtype=np.uint8)
    query = near(rng, item, 31)[0]  # one query may come as 32 bytes, not 1 x 32
    rows, distances = HashSearch(item).within(query, PDQ_MATCH_DISTANCE)[0]
    assert (rows.tolist(), distances.tolist()) == ([0], [31])
    assert_exact(item, np.stack([query, item[0], near(rng, item, 32)[0]]))


def test_hashes_of_the_wrong_shape_are_refused():
    with pytest.raises(ValueError, match="N x 32"):
        HashSearch(np.zeros((4, 16), np.uint8))


@pytest.mark.skipif(not (SHARED_DATA.is_dir() and pdq_available()),
                    reason=f"needs pdqhash (the pdq extra) and the shared photos at {SHARED_DATA}")
def test_real_pdq_hashes_with_their_skewed_words_agree():
    from wildvision.hashing import pdq_hashes
    from wildvision.images import load_image

    photos = sorted((SHARED_DATA / "images").rglob("*.jpg"))[:: 97][:60]
    variants = np.stack([pdq_hashes(load_image(path)).hashes for path in photos])  # photos x 8 x 32
    rng = np.random.default_rng(8)
    stored = np.concatenate([variants[10:].reshape(-1, 32), near(rng, variants[:10, 0], 25)])
    assert_exact(stored, variants[:12].reshape(-1, 32), (0, 15, PDQ_MATCH_DISTANCE, 32, 47))
