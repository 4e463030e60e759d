"""Word count as map + reduce: count each chunk of lines in a task, then merge the Counters.

The classic MapReduce shape, with two calls:

* ``ua.map(count_words, chunks)``: each task counts the words of one chunk of lines
  and returns a ``collections.Counter`` (the "map" side, with a local combine);
* ``ua.reduce(merge, counters)``: the Counters are merged pairwise, by a tree of tasks
  whose shape is fixed by the input alone, so the result is the same on every backend.

Compare examples/wordcount.py, which sends one ``(word, 1)`` pair per word to
``ua.reduce_by_key`` and lets it partition by key; here the program chooses the chunks
and the per-chunk counting itself, which suits a few large inputs (files, say) better.

This program names no backend; switch it with configuration alone:

    UNIDIST_API_BACKEND=serial python examples/wordcount_mapreduce.py
    unidist-api run --backend dask examples/wordcount_mapreduce.py
"""

import itertools
import random
import re
from collections import Counter

import unidist_api as ua

# the opening of A Tale of Two Cities (1859, public domain): the vocabulary
TEXT = """It was the best of times, it was the worst of times, it was the age of wisdom,
it was the age of foolishness, it was the epoch of belief, it was the epoch of
incredulity, it was the season of Light, it was the season of Darkness, it was the
spring of hope, it was the winter of despair, we had everything before us, we had
nothing before us, we were all going direct to Heaven, we were all going direct the
other way"""

WORD = re.compile(r"[a-z']+")


def corpus(lines: int, seed: int = 1859):
    """Lines of 4 to 12 words drawn, with a seeded generator, from the text's words."""
    words = WORD.findall(TEXT.lower())
    rng = random.Random(seed)
    for _ in range(lines):
        yield " ".join(rng.choices(words, k=rng.randint(4, 12)))


def chunks(iterable, size: int):
    """Lists of ``size`` consecutive items (the last one shorter): one task's input each."""
    iterator = iter(iterable)
    while chunk := list(itertools.islice(iterator, size)):
        yield chunk


def count_words(lines: list[str]) -> Counter:
    """Map: the word counts of one chunk of lines."""
    counts: Counter = Counter()
    for line in lines:
        counts.update(WORD.findall(line.lower()))
    return counts


def merge(a: Counter, b: Counter) -> Counter:
    """Reduce: two partial counts into one. Associative, as ua.reduce requires."""
    merged = a.copy()  # a task may modify its arguments, but a copy reads more clearly
    merged.update(b)
    return merged


def main() -> None:
    # map is lazy: it reads the generator as work proceeds, so the corpus is never
    # all in memory at once; reduce consumes the counters as they come
    counters = ua.map(count_words, chunks(corpus(40_000), 2_000))
    total = ua.reduce(merge, counters, initial=Counter())

    print(f"{total.total()} words, {len(total)} distinct")
    # sort by count, then by word: ties are printed in a fixed order
    top = sorted(total.items(), key=lambda item: (-item[1], item[0]))[:6]
    print("most frequent:", ", ".join(f"{word} {n}" for word, n in top))
    rarest = sorted(total.items(), key=lambda item: (item[1], item[0]))[:3]
    print("rarest:", ", ".join(f"{word} {n}" for word, n in rarest))

    # the same answer as counting everything in one process
    print("equals a serial count:", total == count_words(list(corpus(40_000))))


if __name__ == "__main__":
    main()
