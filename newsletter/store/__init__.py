"""The store: the statements that write the database's tables, each table written by one module of
this room.

lists        `lists`: created and deleted.
subscribers  `subscribers`: one at a time (commands, the sign-up form) or set-based (a CSV import).
memberships  `memberships` and their append-only log `events`: the writes behind membership.py's
             compare-and-sets (which decide what may change), frequency and consent.
campaigns    `campaigns` (with `campaign_tracking`), `deliveries` and `batches`: a send's records.
feedback     `webhook_events`, `campaign_stats`, `campaign_events` and `sync_state`: what the
             provider told us.
lease        `leases`: one holder at a time for the daily run and for the send of each campaign.
messages     `messages`: one-off messages (tests, confirmations, welcomes) under their idempotency keys.

Erasure and purges ask each owner to forget an address or a person. Reads that join several tables
for one purpose (a list's audience, a send's pages, the report, the sign-up queue) stay with that
purpose. Three tables keep a one-module owner outside this room: signup.py the sign-up queue and
attempts, review.py the editors' reviews, content/generate.py the summaries.

It imports SQLAlchemy and `db` (the schema, its constants and the engine's helpers), and `errors`
for the lease's refusals; never the domain modules (content, membership, subscribers, the send
loop, the providers, the skins: cli, web, daily), which call into it.
"""
