"""genesis.json, the chain's trust root (SPEC.md §12.1): to and from the text.

Pure: callers read and write the file. Light clients, monitors and every node
parse it with this one function, so they agree on what a genesis is.
"""

from __future__ import annotations

import json

from dpkid.core import codec
from dpkid.core.crypto import address_of
from dpkid.core.types import (
    Genesis,
    GenesisAccount,
    GenesisEndorser,
    GenesisValidator,
    Policy,
)


class GenesisError(ValueError):
    """The text is not a valid genesis; ``str()`` says which part."""


def genesis_to_json(g: Genesis) -> str:
    doc = {
        "chain_id": g.chain_id,
        "genesis_time_ms": g.genesis_time_ms,
        "validators": [
            {
                "pubkey": v.pubkey.hex(),
                "address": address_of(v.pubkey).hex(),
                "power": v.power,
                "name": v.name,
            }
            for v in g.validators
        ],
        "endorsers": [
            {"pubkey": e.pubkey.hex(), "address": address_of(e.pubkey).hex(), "name": e.name}
            for e in g.endorsers
        ],
        "accounts": [{"address": a.address.hex(), "balance": a.balance} for a in g.accounts],
        "policy": {name: getattr(g.policy, name) for name in Policy.__struct_fields__},
    }
    return json.dumps(doc, indent=2) + "\n"


def genesis_from_json(text: str) -> Genesis:
    """Parse and check a genesis; GenesisError says which part is wrong."""
    try:
        d = json.loads(text)
    except json.JSONDecodeError as exc:
        raise GenesisError(f"not JSON (line {exc.lineno}, column {exc.colno})") from None
    if not isinstance(d, dict):
        raise GenesisError("not a JSON object")
    try:
        pol = d.get("policy", {})
        if not isinstance(pol, dict):
            raise GenesisError('"policy" is not an object')
        unknown = set(pol) - set(Policy.__struct_fields__)
        if unknown:
            raise GenesisError(f"unknown policy fields: {sorted(unknown)}")
        g = Genesis(
            chain_id=d["chain_id"],
            genesis_time_ms=int(d["genesis_time_ms"]),
            validators=[
                GenesisValidator(bytes.fromhex(v["pubkey"]), int(v["power"]), v.get("name", ""))
                for v in d["validators"]
            ],
            endorsers=[
                GenesisEndorser(bytes.fromhex(e["pubkey"]), e["name"]) for e in d["endorsers"]
            ],
            accounts=[
                GenesisAccount(bytes.fromhex(a["address"]), int(a["balance"]))
                for a in d["accounts"]
            ],
            policy=Policy(**pol),
        )
    except GenesisError:
        raise
    except KeyError as exc:
        raise GenesisError(f"missing field {exc.args[0]!r}") from None
    except (ValueError, TypeError, AttributeError) as exc:
        # A value of the wrong type or format (hex, integer); the text names it.
        raise GenesisError(f"a field has a wrong value ({exc})") from None
    # Round-trip through the canonical codec so every bound is checked.
    try:
        return codec.decode(codec.encode(g), Genesis)
    except codec.DecodeError as exc:
        raise GenesisError(f"out of bounds: {exc}") from None
