"""The head end's command side: an MQTT v5 requester with its own client certificate.

It publishes a command to ``<prefix>/<gateway>/cmd/<name>`` with a Response Topic and
Correlation Data and collects whatever arrives on the topics it subscribed to (replies, events),
so a test or the rig can check what the gateway answered, as the head end would see it.
"""

from __future__ import annotations

import asyncio
import ssl
import threading
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from hil.broker import Mosquitto
from hil.pki import Pki

REPLIES = "ami/headend/replies"


@dataclass
class Received:
    """One message the head end received."""

    topic: str
    payload: bytes
    props: Any
    retain: bool

    def prop(self, name: str) -> Any:
        return getattr(self.props, name, None)

    def user(self) -> dict[str, str]:
        return dict(self.prop("UserProperty") or [])


class CommandRequester:
    """A head end's requester: its own certificate, subscriptions for replies, real paho."""

    def __init__(
        self,
        pki: Pki,
        broker: Mosquitto,
        subscriptions: tuple[str, ...] = (REPLIES,),
        *,
        gateway: str = "gateway-01",
        topic_prefix: str = "ami",
        client_id: str = "headend",
    ) -> None:
        self.gateway = gateway
        self.got: list[Received] = []
        self.lock = threading.Lock()
        self.connected = threading.Event()
        self.subs = subscriptions
        self.topic_prefix = topic_prefix
        c = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv5)
        ctx = ssl.create_default_context(cafile=str(pki.ca_cert))
        ctx.load_cert_chain(str(pki.headend.cert), str(pki.headend.key))
        c.tls_set_context(ctx)
        c.on_connect = self._on_connect
        c.on_message = self._on_message
        c.on_subscribe = lambda *_a: self.connected.set()
        c.reconnect_delay_set(0.1, 0.2)  # type: ignore[arg-type]  # paho types them int; floats work
        self.client = c
        self.broker = broker

    def _on_connect(self, c: paho.Client, *_a: Any) -> None:
        self.connected.clear()
        c.subscribe([(s, 1) for s in self.subs])

    def _on_message(self, _c: Any, _u: Any, msg: paho.MQTTMessage) -> None:
        with self.lock:
            self.got.append(Received(msg.topic, bytes(msg.payload), msg.properties, msg.retain))

    def __enter__(self) -> CommandRequester:
        self.client.connect("localhost", self.broker.port)
        self.client.loop_start()
        if not self.connected.wait(5):
            raise TimeoutError("the head end's requester did not get its subscriptions in 5 s")
        return self

    def __exit__(self, *_e: object) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def request(
        self,
        name: str,
        payload: bytes,
        *,
        gateway: str | None = None,
        correlation: bytes | None = b"c1",
        response_topic: str | None = REPLIES,
        sent_at: str | None = None,
        retain: bool = False,
        content_type: str = "application/json",
    ) -> None:
        props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        if response_topic is not None:
            props.ResponseTopic = response_topic
        if correlation is not None:
            props.CorrelationData = correlation
        props.ContentType = content_type
        if sent_at is not None:
            props.UserProperty = [("sent-at", sent_at)]
        info = self.client.publish(
            f"{self.topic_prefix}/{gateway or self.gateway}/cmd/{name}",
            payload,
            qos=1,
            retain=retain,
            properties=props,
        )
        info.wait_for_publish(5)

    def received(self, topic: str = REPLIES) -> list[Received]:
        with self.lock:
            return [g for g in self.got if g.topic == topic]

    async def wait_for(self, n: int, timeout: float = 5.0, topic: str = REPLIES) -> list[Received]:
        """The first ``n`` (or more) messages on ``topic``, waiting up to ``timeout`` s."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while len(self.received(topic)) < n:
            if loop.time() > deadline:
                raise TimeoutError(f"{len(self.received(topic))} of {n} messages on {topic}")
            await asyncio.sleep(0.01)
        return self.received(topic)
