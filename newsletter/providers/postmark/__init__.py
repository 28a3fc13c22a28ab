"""Postmark (https://postmarkapp.com): `/email/batch` and `/email/batchWithTemplates` (`mail`), with
the issue made a template (`templates`), its bounce, spam-complaint and subscription-change
webhooks (`webhooks`), its suppression list (`suppressions`), the HTTP client they share (`http`)
and its settings (`settings`). May import the neutral provider types
(`..base`, `..headers`), the settings, errors and database statuses; nothing outside this folder
imports it but the registry.

Loaded light: the settings read `settings` here, and must not pull in httpx with it.
"""
