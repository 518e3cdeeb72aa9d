"""`python -m bench.partitions`: the completion index's table partitions at 5,000 captures/s, simulated.

Mints the ids of `--seconds` of captures at `--rate` per second, gives each a traffic mix (three
deployments, one an alias with two targets; a metadata pair every call has; a user pair from 50,000
users; a trace pair unique to the call on 10 % of calls; 20 owners), finds the partitions its rows
go to with the index's own `partitions_of`, and replays the indexer over them: batches of `--batch`
events in capture order, each writing its rows in one transaction per partition (at most 100
entities; a fresh batch's `all` rows are inserts, so it reads nothing to know they are new), one
range query of `forgotten`, and one usage update per owner. Prints, per second, the busiest partition's entities against Azure
Table's 2,000 entities/s per partition, and table transactions and all storage requests (with the
capture's blob write and the indexer's listing of each 65 ms bucket of capture time its batch
touches) against 20,000 per account — with the index's
shards, and as if every term were one partition.

Targets: https://learn.microsoft.com/azure/storage/tables/scalability-targets
"""

from __future__ import annotations

import argparse
import random
import re
from collections import Counter, defaultdict

from shared.store import ids
from shared.store.completion_index import SHARDS, IndexEntry, partitions_of

PARTITION_ENTITIES_PER_SECOND = 2_000
ACCOUNT_REQUESTS_PER_SECOND = 20_000
ROWS_PER_TERM = 2
"""Each capture writes an ascending and a descending row per term."""
ENTITIES_PER_TRANSACTION = 100
_SHARD_SUFFIX = re.compile(r"-\d\d$")


def captures(rate: int, seconds: int, rng: random.Random) -> list[IndexEntry]:
    start_us = 1_800_000_000 * 1_000_000
    entries = []
    for number in range(rate * seconds):
        captured_us = start_us + number * 1_000_000 // rate
        deployment = rng.choice(["chat", "summarise", "assistant"])
        served_by = rng.choice(["gpt-4o", "gpt-4o-mini"]) if deployment == "assistant" else None
        metadata = {"app": "support", "user": f"u{rng.randrange(50_000)}"}
        if rng.random() < 0.1:
            metadata["trace"] = f"{number:x}"
        entries.append(
            IndexEntry(
                id=ids.new_completion_id(now_us=captured_us),
                deployment=deployment,
                served_by=served_by,
                model=served_by or f"{deployment}-model",
                metadata=metadata,
                owner=f"key:team{rng.randrange(20)}",
                size_bytes=4_000,
            )
        )
    return entries


def simulate(entries: list[IndexEntry], *, batch: int, sharded: bool) -> dict[str, float]:
    entities: Counter[tuple[int, str]] = Counter()
    table_requests: Counter[int] = Counter()
    blob_requests: Counter[int] = Counter()
    for first in range(0, len(entries), batch):
        events = entries[first : first + batch]
        second = events[-1].captured_us // 1_000_000  # the batch is written once its last event is in
        rows: Counter[str] = Counter()
        for entry in events:
            for partition in partitions_of(entry):
                rows[partition if sharded else _SHARD_SUFFIX.sub("", partition)] += ROWS_PER_TERM
        for partition, count in rows.items():
            entities[second, partition] += count
            table_requests[second] += -(-count // ENTITIES_PER_TRANSACTION)
        owners = {entry.owner for entry in events}
        table_requests[second] += 1 + len(owners)
        # each capture's write; the indexer lists the batch's 65 ms buckets (at this rate, several ids each)
        blob_requests[second] += len(events) + len({entry.captured_us >> 16 for entry in events})
    per_partition: dict[int, list[int]] = defaultdict(list)
    for (second, _), count in entities.items():
        per_partition[second].append(count)
    full = sorted(per_partition)[1:-1]  # whole seconds only
    return {
        "partitions": len({partition for _, partition in entities}),
        "busiest": max(max(per_partition[s]) for s in full),
        "tables": max(table_requests[s] for s in full),
        "all": max(table_requests[s] + blob_requests[s] for s in full),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=int, default=5_000, help="captures per second")
    parser.add_argument("--seconds", type=int, default=6)
    parser.add_argument("--batch", type=int, default=500, help="events per indexer delivery")
    args = parser.parse_args()
    entries = captures(args.rate, args.seconds, random.Random(17))
    print(f"{args.rate} captures/s for {args.seconds} s, indexer batches of {args.batch} events")
    print(
        f"{'layout':<22}{'partitions':>11}{'busiest partition/s':>21}{'vs 2,000':>10}"
        f"{'table tx/s':>12}{'all requests/s':>16}{'vs 20,000':>11}"
    )
    for label, sharded in ((f"{SHARDS} shards per term", True), ("one partition a term", False)):
        found = simulate(entries, batch=args.batch, sharded=sharded)
        print(
            f"{label:<22}{found['partitions']:>11.0f}{found['busiest']:>21.0f}"
            f"{found['busiest'] / PARTITION_ENTITIES_PER_SECOND:>9.0%} {found['tables']:>11.0f}"
            f"{found['all']:>16.0f}{found['all'] / ACCOUNT_REQUESTS_PER_SECOND:>10.0%}"
        )


if __name__ == "__main__":
    main()
