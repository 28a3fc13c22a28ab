"""The store: the database's tables, each written by one module of this room.

lease     `leases`: one holder at a time for the daily run and for the send of each campaign.
messages  `messages`: one-off messages (tests, confirmations, welcomes) under their idempotency keys.

The other tables' statements still sit with the module that owns each (membership.py the
memberships and their event log, signup.py the sign-up queue and attempts, send/campaigns.py a
send's campaigns, deliveries and batches, subscribers.py lists and subscribers); they move here one
at a time.

It may import `db` (the schema and the engine), `errors` and `addresses`; nothing here imports the
content, the send loop, the providers or the skins (cli, web, daily), which call into it.
"""
