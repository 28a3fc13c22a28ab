"""The store: the database's tables, each written by one module of this room.

lease   `leases`: one holder at a time for the daily run and for the send of each campaign.

It may import `db` (the schema and the engine), `errors` and `addresses`; nothing here imports the
content, the send loop, the providers or the skins (cli, web, daily), which call into it.
"""
