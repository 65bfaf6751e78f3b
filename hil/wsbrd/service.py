"""The emulated wsbrd on D-Bus: the same bus name, object, interface and property shapes as
Silicon Labs' daemon, fed from a :class:`~.model.WsbrdModel`.

Like the real wsbrd, a change is signalled as PropertiesChanged with ``Nodes`` and
``RoutingGraph`` *invalidated* (no values: clients read again); ``signal_values=True`` sends the
values in the signal instead, so a client's handling of both forms is tested.
"""

from dataclasses import dataclass
from typing import Annotated, Any

from dbus_fast import Variant
from dbus_fast.aio import MessageBus
from dbus_fast.annotations import DBusSignature
from dbus_fast.constants import PropertyAccess, RequestNameReply
from dbus_fast.service import ServiceInterface, dbus_method, dbus_property

from firmware_agent.mesh.wsbrd_model import BUS_NAME, INTERFACE, OBJECT_PATH

from .model import WsbrdModel

NodesValue = Annotated[list[list[Any]], DBusSignature("a(aya{sv})")]
GraphValue = Annotated[list[list[Any]], DBusSignature("a(aybaay)")]
Bytes = Annotated[bytes, DBusSignature("ay")]
Version = Annotated[list[int], DBusSignature("(uuu)")]
Text = Annotated[str, DBusSignature("s")]
UInt16 = Annotated[int, DBusSignature("q")]
Byte = Annotated[int, DBusSignature("y")]


def _variant(signature: str, value: Any) -> Any:
    """A node-dict entry: (signature, value) becomes a Variant; a Variant stays as it is."""
    return value if isinstance(value, Variant) else Variant(signature, value)


class EmulatedWsbrd(ServiceInterface):
    """wsbrd's D-Bus interface (the part the gateway uses)."""

    def __init__(self, model: WsbrdModel, *, signal_values: bool = False) -> None:
        super().__init__(INTERFACE)
        self.model = model
        self.signal_values = signal_values
        model.add_listener(self.announce)

    def _nodes(self) -> list[list[Any]]:
        return [
            [
                eui,
                {
                    key: _variant(*entry) if isinstance(entry, tuple) else entry
                    for key, entry in props.items()
                },
            ]
            for eui, props in self.model.node_entries()
        ]

    def announce(self) -> None:
        """Tell clients Nodes and RoutingGraph changed."""
        if self.signal_values:
            self.emit_properties_changed(
                {"Nodes": self._nodes(), "RoutingGraph": self.model.graph()}
            )
        else:
            self.emit_properties_changed({}, ["Nodes", "RoutingGraph"])

    @dbus_property(access=PropertyAccess.READ)
    def Nodes(self) -> NodesValue:
        return self._nodes()

    @dbus_property(access=PropertyAccess.READ)
    def RoutingGraph(self) -> GraphValue:
        return self.model.graph()

    @dbus_property(access=PropertyAccess.READ)
    def HwAddress(self) -> Bytes:
        return self.model.root

    @dbus_property(access=PropertyAccess.READ)
    def RcpApiVersion(self) -> Version:
        return [2, 5, 0]

    @dbus_property(access=PropertyAccess.READ)
    def WisunNetworkName(self) -> Text:
        return "emulated-wsbrd"

    @dbus_property(access=PropertyAccess.READ)
    def WisunPanId(self) -> UInt16:
        return 0xABCD

    @dbus_property(access=PropertyAccess.READ)
    def WisunFanVersion(self) -> Byte:
        return 2

    @dbus_method()
    def IncrementRplDtsn(self) -> None:
        self.model.increment_dtsn()


@dataclass
class WsbrdService:
    """The emulated wsbrd connected to a bus and owning wsbrd's name."""

    bus: MessageBus
    interface: EmulatedWsbrd

    @property
    def model(self) -> WsbrdModel:
        return self.interface.model

    async def close(self) -> None:
        self.bus.disconnect()
        await self.bus.wait_for_disconnect()  # type: ignore[no-untyped-call]


async def serve_wsbrd(
    bus_address: str, model: WsbrdModel, *, signal_values: bool = False
) -> WsbrdService:
    """Connect to ``bus_address``, export the emulated wsbrd and take its bus name."""
    bus = await MessageBus(bus_address=bus_address).connect()
    interface = EmulatedWsbrd(model, signal_values=signal_values)
    bus.export(OBJECT_PATH, interface)
    reply = await bus.request_name(BUS_NAME)
    if reply is not RequestNameReply.PRIMARY_OWNER:
        bus.disconnect()
        raise RuntimeError(f"cannot own {BUS_NAME} on {bus_address}: {reply}")
    return WsbrdService(bus, interface)
