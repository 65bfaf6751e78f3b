"""The operator's ``security reset``: resynchronise a meter's invocation counter on command.

After a meter-side reset (or a restored backup of the gateway) the meter may expect a higher
client counter than the gateway sends with; every secured read then fails with a MAC Fail. The
public client (wPort 16, lowest security) may read the invocation counter object 0.0.43.1.0.255
(IC 1, attribute 2: the highest client counter the meter has accepted), so the gateway reads it
without keys and sends from that value + 1 on. The counter only ever moves forward (see
counters.py), and the meter's own counter is forgotten so its next frame is accepted.
"""

from __future__ import annotations

from dataclasses import dataclass

from . import obis
from .counters import CounterStore
from .drive import ExchangeDriver, release_quietly
from .link import MeterLink
from .session import DlmsError, DlmsSession

INVOCATION_COUNTER = "0.0.43.1.0.255"
PUBLIC_CLIENT = 16


@dataclass(frozen=True)
class ResetResult:
    meter: str
    meter_counter: int  # the highest client counter the meter says it accepted
    old_next: int  # what the gateway would have sent with
    new_next: int  # what it sends with now


class SecurityResetError(DlmsError):
    """The counter could not be read (the reset changed nothing)."""


async def security_reset(
    link: MeterLink,
    meter: str,
    store: CounterStore,
    *,
    server_address: int = 1,
    public_client: int = PUBLIC_CLIENT,
    timeout: float = 5.0,
    retries: int = 0,
) -> ResetResult:
    """Read 0.0.43.1.0.255 as the public client and send from its value + 1 on."""
    session = DlmsSession(public_client, server_address)
    old = store.state(meter).next_send
    driver = ExchangeDriver(link, timeout, retries)
    await driver.run(session.associate())
    try:
        value = await driver.run(session.read_value(INVOCATION_COUNTER, obis.IC_DATA, 2))
    finally:
        if session.associated:
            # the counter is what matters; the meter drops the association anyway
            await release_quietly(link, session, timeout)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 0xFFFFFFFF:
        raise SecurityResetError(f"meter {meter}: invocation counter reads {value!r}")
    state = store.resync(meter, value + 1)
    return ResetResult(meter, value, old, state.next_send)
