"""`dpkid acme serve`: an RFC 8555 ACME server in front of a dpkid node.

It maps ACME onto ledger objects: an ACME authorization onto a ledger
authorization (SPEC §7.9), finalize onto ``cert_apply`` (or ``cert_renew``
with RFC 9773's ``replaces``), revokeCert onto ``revoke``. It signs those
transactions as the delegate of each user's own grant (SPEC §7.10), which
External Account Binding ties to the ACME account, so users pay and own
their certificates and the server holds nobody's key but its own.
"""
