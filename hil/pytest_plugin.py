"""pytest plugin of the HIL rig (registered through the ``pytest11`` entry point).

Tests reach the target only through these fixtures: the gateway's radio URL, the meters the
target has, the broker and the head end. The same test then runs against emulated radios in CI
and against real boards on a bench, by ``--hil-env FILE``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

import pytest
import yaml

from hil.env import DEFAULT_ENV, HilEnv, load_env

if TYPE_CHECKING:  # imported lazily: this plugin loads into every pytest session
    from firmware_agent.diag.client import Target
    from hil.agent_process import AgentProcess
    from hil.broker import Mosquitto
    from hil.faults import TargetFaults
    from hil.headend import HeadEnd
    from hil.headend.requester import CommandRequester
    from hil.pki import Pki

GatewayConfigFactory = Callable[..., Path]


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("hil", "hardware-in-the-loop rig")
    group.addoption(
        "--hil-env",
        default=None,
        help="environment file naming the target (default: config/hil/emulated.yaml)",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "hil_feature(name, ...): the test needs these features of the target; skipped if absent",
    )


def _env(config: pytest.Config) -> HilEnv:
    path = config.getoption("--hil-env")
    return load_env(Path(path) if path else DEFAULT_ENV)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    env: HilEnv | None = None
    for item in items:
        marker = item.get_closest_marker("hil_feature")
        if marker is None:
            continue
        env = env or _env(config)
        missing = [f for f in marker.args if f not in env.features]
        if missing:
            item.add_marker(
                pytest.mark.skip(reason=f"target {env.name!r} lacks {', '.join(missing)}")
            )


@pytest.fixture(scope="session")
def hil_env(pytestconfig: pytest.Config) -> HilEnv:
    """The target named by --hil-env; a target whose board is absent skips, with the reason."""
    env = _env(pytestconfig)
    if env.absent:
        pytest.skip(f"target {env.name!r}: {env.absent}")
    return env


@pytest.fixture(scope="session")
def hil_pki(hil_env: HilEnv, tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """Fresh mTLS certificates for this session: CA, broker, the gateway, the head end."""
    from hil.pki import generate_pki

    return generate_pki(tmp_path_factory.mktemp("pki"), gateway_ids=(hil_env.gateway_id,))


@pytest.fixture(scope="session")
def broker(hil_env: HilEnv, hil_pki: Pki) -> Iterator[Mosquitto]:
    """A real mosquitto with mTLS (TLS 1.3) on a free loopback port. It persists sessions, as a
    production broker does: tests stop and start it, and a head end with a session must not
    miss what the gateway publishes before the head end has re-subscribed."""
    if hil_env.broker_kind != "local-mosquitto":
        pytest.skip(f"broker kind {hil_env.broker_kind!r} is not supported yet")
    from hil.broker import BrokerOptions, Mosquitto

    with Mosquitto(hil_pki, options=BrokerOptions(persist_sessions=True)) as mosquitto:
        yield mosquitto


@pytest.fixture
def headend(broker: Mosquitto, hil_pki: Pki) -> Iterator[HeadEnd]:
    """The head end's subscriber, connected with its own certificate, fresh for each test."""
    from hil.headend import HeadEnd

    with HeadEnd(broker.host, broker.port, hil_pki) as he:
        yield he


@pytest.fixture(scope="session")
def gateway_radio_url(hil_env: HilEnv) -> str:
    return hil_env.radio_url


@pytest.fixture(scope="session")
def meters(hil_env: HilEnv) -> list[dict[str, Any]]:
    """The target's meters, as the gateway config lists them."""
    data = yaml.safe_load(hil_env.meters_file.read_text())
    assert isinstance(data, list)
    return data


def write_gateway_config(
    directory: Path,
    env: HilEnv,
    pki: Pki,
    broker: Mosquitto,
    radio_url: str,
    **sections: dict[str, Any],
) -> Path:
    """A gateway config for this target in ``directory``: the rig's defaults, then the
    environment's ``gateway.config``, then ``sections`` (each merged per section)."""
    client = pki.client(env.gateway_id)
    doc: dict[str, Any] = {
        "gateway": {"id": env.gateway_id},
        "radio": {"url": radio_url},
        "uplink": {
            "broker_url": f"mqtts://{broker.host}:{broker.port}",
            "tls": {
                "ca_file": str(pki.ca_cert),
                "cert_file": str(client.cert),
                "key_file": str(client.key),
            },
        },
        "spool": {"path": str(directory / "spool.sqlite")},
        "collector": {"interval_s": 5, "jitter_s": 1, "profile_rows": 2},
        "meters": str(env.meters_file),
    }
    for overrides in (env.gateway_config, sections):
        for section, values in overrides.items():
            doc.setdefault(section, {}).update(values)
    path = directory / "gateway.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


@pytest.fixture
def gateway_config(
    hil_env: HilEnv, hil_pki: Pki, broker: Mosquitto, tmp_path: Path, gateway_radio_url: str
) -> GatewayConfigFactory:
    """Writes a gateway config for this target, returns its path; kwargs override sections."""

    def make(**sections: dict[str, Any]) -> Path:
        return write_gateway_config(
            tmp_path, hil_env, hil_pki, broker, gateway_radio_url, **sections
        )

    return make


@pytest.fixture
def gateway_agent(tmp_path: Path) -> Iterator[Callable[..., AgentProcess]]:
    """Starts ``firmware-agent run --config FILE [extra...]`` processes; kills leftovers after."""
    from hil.agent_process import AgentProcess

    started: list[AgentProcess] = []

    def start(config: Path, *extra: str) -> AgentProcess:
        agent = AgentProcess(config, tmp_path / f"agent-{len(started)}.log", *extra)
        started.append(agent)
        return agent

    yield start
    for agent in started:
        agent.kill()


# --- the target's fault hooks and one gateway for the acceptance suite -----------------------


@pytest.fixture(scope="session")
def fault_socket(hil_env: HilEnv) -> Iterator[Path | None]:
    """Where an emulated target's virtual RCP serves its fault hooks (short: a UNIX socket
    path has ~100 bytes); None for real boards."""
    if hil_env.radio is None or hil_env.radio.kind != "virtual-rcp":
        yield None
        return
    directory = Path(tempfile.mkdtemp(prefix="hil-faults-"))
    yield directory / "control.sock"
    for leftover in directory.iterdir():
        leftover.unlink()
    directory.rmdir()


@pytest.fixture(scope="session")
def target_faults(hil_env: HilEnv, fault_socket: Path | None) -> TargetFaults:
    """The target's fault hooks (hil.faults): the emulated world's control socket, or the
    bench's power-control commands and USB unbind. A fault the target lacks raises
    FaultUnsupported: call :func:`skip_unsupported` around it."""
    from hil.faults import BoardFaults, EmulatedFaults

    if fault_socket is not None:
        return EmulatedFaults(fault_socket)
    boards = (hil_env.radio, *hil_env.injectors) if hil_env.radio else hil_env.injectors
    commands = {b.role: b.power_command for b in boards if b.power_command}
    for board in hil_env.injectors:  # an injector's meters go dark with their board
        if board.power_command:
            commands.update({m: board.power_command for m in board.meters})
    usb_path = hil_env.radio.usb_path if hil_env.radio else None
    return BoardFaults(hil_env.name, commands, usb_path)


@dataclass
class Gateway:
    """A gateway agent process on this target, reachable only as the head end and a
    technician reach it: MQTT (readings, events, commands) and the diag API."""

    id: str
    agent: AgentProcess
    headend: HeadEnd
    broker: Mosquitto
    pki: Pki
    diag: Target
    meter_ids: tuple[str, ...]

    def diag_get(self, path: str) -> Any:
        from firmware_agent.diag.client import DiagClient

        with DiagClient(self.diag, timeout=30.0) as client:
            return client.get(path)

    def diag_up(self) -> bool:
        from firmware_agent.diag.client import DiagClientError

        try:
            self.diag_get("/api/v1/status")
        except DiagClientError:
            return False
        return True

    def hes_diag(self, *args: str, timeout: float = 90.0) -> subprocess.CompletedProcess[str]:
        """``hes-diag ARGS --url --ca --cert --key`` as a technician's laptop runs it."""
        exe = Path(sys.executable).with_name("hes-diag")
        d = self.diag
        argv = [str(exe), *args, "--url", d.url, "--ca", str(d.ca), "--cert", str(d.cert)]
        argv += ["--key", str(d.key)]
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)

    def commands(self, *topics: str) -> CommandRequester:
        """The head end's command side (a context manager), subscribed to replies and
        ``topics`` (e.g. ``f"ami/{gw.id}/events/cim"``)."""
        from hil.headend.requester import REPLIES, CommandRequester

        # Its own client id: the subscriber (self.headend) holds "headend", and a second
        # connection under one id makes the broker drop the first, back and forth.
        return CommandRequester(
            self.pki, self.broker, (REPLIES, *topics), gateway=self.id, client_id="headend-cmd"
        )

    def command(self, name: str, body: dict[str, Any], timeout: float = 60.0) -> dict[str, Any]:
        """One JSON command and its reply (the reply's JSON)."""
        import asyncio

        with self.commands() as requester:
            requester.request(name, json.dumps(body).encode(), correlation=name.encode())
            replies = asyncio.run(requester.wait_for(1, timeout))
        answer: dict[str, Any] = json.loads(replies[0].payload)
        return answer

    def records_of(self, meter_id: str) -> list[dict[str, Any]]:
        return [r for r in self.headend.records() if r.get("device_id") == meter_id]

    def wait(self, what: Callable[[], bool], timeout: float, doing: str) -> None:
        deadline = time.monotonic() + timeout
        while not what():
            if self.agent.proc.poll() is not None:
                raise AssertionError(f"the agent exited while {doing}\n{self.agent.tail()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout} s {doing}\n{self.agent.tail()}")
            time.sleep(0.2)


# Module scope: the suite's agent ends with its module, so it does not keep publishing to the
# session's broker while later tests count what their own gateways delivered.
@pytest.fixture(scope="module")
def gateway(
    hil_env: HilEnv,
    hil_pki: Pki,
    broker: Mosquitto,
    meters: list[dict[str, Any]],
    fault_socket: Path | None,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Gateway]:
    """One agent process for the acceptance module, with the diag API on loopback for a
    technician's certificate, and the head end's subscriber; both live as long as the agent."""
    from firmware_agent.diag.client import Target
    from hil.agent_process import AgentProcess
    from hil.broker import free_port
    from hil.headend import HeadEnd
    from hil.pki import generate_pki

    work = tmp_path_factory.mktemp("gateway")
    diag_pki = generate_pki(
        work / "diag-pki",
        gateway_ids=("technician",),
        headend_id="unused",
        server_names=("127.0.0.1", "localhost"),
    )
    port = free_port()
    url = hil_env.radio_url
    if fault_socket is not None:
        url += ("&" if "?" in url else "?") + urlencode({"control": str(fault_socket)})
    config = write_gateway_config(
        work,
        hil_env,
        hil_pki,
        broker,
        url,
        diag={
            "ca_file": str(diag_pki.ca_cert),
            "cert_file": str(diag_pki.server.cert),
            "key_file": str(diag_pki.server.key),
            "bind": "127.0.0.1",
            "port": port,
            "probe_count": 2,
        },
        collector={"interval_s": 6, "jitter_s": 1, "profile_rows": 2, "timeout_s": 4.0},
    )
    technician = diag_pki.client("technician")
    target = Target(
        hil_env.gateway_id, f"https://127.0.0.1:{port}", diag_pki.ca_cert, technician.cert,
        technician.key,
    )  # fmt: skip
    # Its own client id: two subscribers with one id would take the connection from each other.
    # A persistent session: the acceptance tests restart the broker, and the gateway may be
    # back (publishing its last gasp first) before the head end has re-subscribed.
    with HeadEnd(
        broker.host, broker.port, hil_pki, client_id="headend-rig", session_expiry_s=3600
    ) as headend:
        agent = AgentProcess(config, work / "agent.log")
        try:
            gw = Gateway(
                hil_env.gateway_id, agent, headend, broker, hil_pki, target,
                tuple(str(m["id"]) for m in meters),
            )  # fmt: skip
            gw.wait(gw.diag_up, 30, "for the diag API")
            yield gw
        finally:
            agent.terminate()


def skip_unsupported(call: Callable[[], None]) -> None:
    """Run a fault hook; a target that cannot inject it skips the test with the reason."""
    from hil.faults import FaultUnsupported

    try:
        call()
    except FaultUnsupported as exc:
        pytest.skip(str(exc))
