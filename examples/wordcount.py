"""Word count with reduce_by_key: hash partitions, range partitions, the same counts.

A seeded generator makes the corpus (no files, no network), and reduce_by_key reads it
lazily, in blocks. This program names no backend; it prints the same lines on every one:

    UNIDIST_API_BACKEND=serial python examples/wordcount.py
    unidist-api run --backend local --workers 2 examples/wordcount.py
"""

import operator
import random

import unidist_api as ua

SYLLABLES = ["ka", "lo", "mi", "ne", "ru", "sa", "to", "vi", "ze", "po", "an", "el"]


def corpus(lines: int, seed: int = 2024):
    """Lines of words from a seeded random vocabulary: Zipf-like, so some words are frequent."""
    rng = random.Random(seed)
    vocabulary = [
        "".join(rng.choice(SYLLABLES) for _ in range(rng.randint(1, 3))) for _ in range(3000)
    ]
    weights = [1 / (rank + 1) for rank in range(len(vocabulary))]
    for _ in range(lines):
        yield " ".join(rng.choices(vocabulary, weights, k=rng.randint(5, 15)))


def word_pairs(lines):
    for line in lines:
        for word in line.split():
            yield word, 1


def main() -> None:
    by_hash = ua.reduce_by_key(operator.add, word_pairs(corpus(5_000)))
    print(f"{sum(by_hash.values())} words, {len(by_hash)} distinct")
    print("first seen:", ", ".join(list(by_hash)[:6]))
    top = sorted(by_hash.items(), key=lambda item: (-item[1], item[0]))[:8]
    print("most frequent:", ", ".join(f"{word} {count}" for word, count in top))

    # range partitions: words before "k", before "s", and the rest
    by_range = ua.reduce_by_key(operator.add, word_pairs(corpus(5_000)), partition=["k", "s"])
    print(
        "range partitions give the same counts:",
        by_range == by_hash,
        "in the same order:",
        list(by_range) == list(by_hash),
    )

    # the first letter of each word, counted with the user's own partition function
    letters = ua.reduce_by_key(
        operator.add,
        ((word[0], n) for word, n in by_hash.items()),
        partition=lambda letter: ord(letter) % 4,
        partitions=4,
    )
    print("by first letter:", " ".join(f"{k}={v}" for k, v in sorted(letters.items())))


if __name__ == "__main__":
    main()
