"""The order the indexer writes a batch's rows in: every term's rows first, the `all` rows last (as
inserts), so a list, which starts from a term's rows or `all`, finds an entry only once it is whole."""

from __future__ import annotations

import uuid

from azure.data.tables.aio import TableClient

from local_host.azurite import Azurite
from shared.store.completion_filter import CompletionFilter
from shared.store.completion_index import CompletionIndex, IndexEntry
from shared.store.ids import new_completion_id
from tests.shared.counting_transport import CountingTransport


async def test_the_all_rows_go_in_last_as_inserts_and_tell_the_new_entries(azurite: Azurite) -> None:
    tables = CountingTransport()
    async with TableClient.from_connection_string(
        azurite.connection_string, f"t{uuid.uuid4().hex[:12]}", transport=tables
    ) as table:
        await table.create_table()
        index = CompletionIndex(table)
        entries = [
            IndexEntry(id=new_completion_id(), deployment="d", model="m", metadata={"user": f"u{n}"}, owner="o")
            for n in range(40)
        ]
        tables.sent.clear()
        tables.bodies.clear()

        assert await index.add_many(entries[:30]) == {entry.id for entry in entries[:30]}

        batches = [
            body for (method, path), body in zip(tables.sent, tables.bodies, strict=True) if path.endswith("$batch")
        ]
        inserts = [b" HTTP/1.1" in body and b"\r\nPOST " in body for body in batches]
        assert any(inserts) and inserts == sorted(inserts), "every upsert goes before the first insert"
        # A batch meeting rows already there (a redelivery) counts only its new entries, and stays whole.
        assert await index.add_many(entries[20:]) == {entry.id for entry in entries[30:]}
        for selection in (CompletionFilter(), CompletionFilter(model="m"), CompletionFilter(metadata={"user": "u35"})):
            walked = [entry.id async for entry in index.walk(selection)]
            assert walked == sorted(entry.id for entry in entries if selection.metadata in ({}, entry.metadata))
