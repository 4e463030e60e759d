"""A 3-stage ETL pipeline: extract (parse), transform, load, each with its own workers.

    raw CSV lines --parse (2 workers)--> records --enrich (2 workers)--> rows
                  --load (1 worker: appends to a file, in input order)--> line numbers

``ua.pipeline`` runs the stages concurrently: while record k is being enriched, record
k+1 is being parsed and row k-1 written. ``ua.stage(fn, workers=n)`` caps how many tasks
of one stage run at once. The sink has ``workers=1``: it handles its items one at a
time, in input order, so it can append to a file safely (one writer, no interleaving)
and the file comes out in the order of the input, whatever backend runs it.
``progress=True`` shows a bar per stage on stderr; stdout stays the same on every
backend (the test suite compares it).

This program names no backend; switch it with configuration alone:

    UNIDIST_API_BACKEND=serial python examples/etl_pipeline.py
    unidist-api run --backend dask --workers 2 examples/etl_pipeline.py
"""

import hashlib
import os
import random
import tempfile

import unidist_api as ua

CITIES = {"Lyon": "FR", "Porto": "PT", "Gent": "BE", "Turku": "FI", "Graz": "AT"}
VAT = {"FR": 0.20, "PT": 0.23, "BE": 0.21, "FI": 0.255, "AT": 0.20}


def raw_lines(count: int, seed: int = 7):
    """The "extract" source: CSV text as it would come from a file or a socket."""
    rng = random.Random(seed)
    for order_id in range(1, count + 1):
        city = rng.choice(sorted(CITIES))
        quantity = rng.randint(1, 9)
        price_cents = rng.randint(199, 9999)
        yield f"{order_id},{city},{quantity},{price_cents}"


def parse(line: str) -> dict:
    """Stage 1, extract/parse: a CSV line into a record (here, where bad input would fail)."""
    order_id, city, quantity, price_cents = line.split(",")
    return {
        "id": int(order_id),
        "city": city,
        "quantity": int(quantity),
        "price_cents": int(price_cents),
    }


def enrich(record: dict) -> dict:
    """Stage 2, transform: look up the country, compute totals with VAT, in whole cents."""
    country = CITIES[record["city"]]
    net = record["quantity"] * record["price_cents"]
    vat = round(net * VAT[country])  # integers: no float formatting differences anywhere
    return {**record, "country": country, "net": net, "vat": vat, "gross": net + vat}


def loader(path: str):
    """Stage 3, the sink: a function that appends one row to the file at ``path``.

    A function made here, with the path built in, ships to the workers with it; the
    stage that runs it has workers=1: one call at a time, in input order, so appends
    never interleave and the file's order is the input's on every backend. (The file is
    on this machine; on a real cluster, write to shared storage or a database instead.)
    """

    def load(row: dict) -> int:
        with open(path, "a") as out:
            out.write(f"{row['id']},{row['country']},{row['net']},{row['vat']},{row['gross']}\n")
        return row["id"]

    return load


def main() -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "orders.csv")
        etl = ua.pipeline(
            ua.stage(parse, workers=2),
            ua.stage(enrich, workers=2),
            ua.stage(loader(path), workers=1),  # the single writer, in input order
        )
        # the pipeline is lazy: it runs as its outputs are consumed (here, by list)
        loaded = list(etl(raw_lines(2000), progress=True))
        print(f"loaded {len(loaded)} rows; outputs in input order:", loaded == sorted(loaded))

        with open(path) as file:
            lines = file.read().splitlines()
        ids = [int(line.split(",")[0]) for line in lines]
        print("file written in input order:", ids == list(range(1, 2001)))
        print("first rows:")
        for line in lines[:3]:
            print("  ", line)

        # an aggregate of the loaded data: gross revenue per country, in cents
        gross: dict[str, int] = {}
        for line in lines:
            _, country, _, _, amount = line.split(",")
            gross[country] = gross.get(country, 0) + int(amount)
        print("gross per country:", ", ".join(f"{c} {gross[c]}" for c in sorted(gross)))
        digest = hashlib.sha256("\n".join(lines).encode()).hexdigest()[:16]
        print("sha256 of the file:", digest)


if __name__ == "__main__":
    main()
