"""pytest plugin of the HIL rig (registered through the ``pytest11`` entry point).

Tests reach the target only through these fixtures: the gateway's radio URL, the meters the
target has, the broker and the head end. The same test then runs against emulated radios in CI
and against real boards on a bench, by ``--hil-env FILE``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import yaml

from hil.env import DEFAULT_ENV, HilEnv, load_env

if TYPE_CHECKING:  # imported lazily: this plugin loads into every pytest session
    from hil.agent_process import AgentProcess
    from hil.broker import Mosquitto
    from hil.headend import HeadEnd
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
    """A real mosquitto with mTLS (TLS 1.3) on a free loopback port."""
    if hil_env.broker_kind != "local-mosquitto":
        pytest.skip(f"broker kind {hil_env.broker_kind!r} is not supported yet")
    from hil.broker import Mosquitto

    with Mosquitto(hil_pki) as mosquitto:
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


@pytest.fixture
def gateway_config(
    hil_env: HilEnv, hil_pki: Pki, broker: Mosquitto, tmp_path: Path, gateway_radio_url: str
) -> GatewayConfigFactory:
    """Writes a gateway config for this target, returns its path; kwargs override sections."""

    def make(**sections: dict[str, Any]) -> Path:
        client = hil_pki.client(hil_env.gateway_id)
        doc: dict[str, Any] = {
            "gateway": {"id": hil_env.gateway_id},
            "radio": {"url": gateway_radio_url},
            "uplink": {
                "broker_url": f"mqtts://{broker.host}:{broker.port}",
                "tls": {
                    "ca_file": str(hil_pki.ca_cert),
                    "cert_file": str(client.cert),
                    "key_file": str(client.key),
                },
            },
            "spool": {"path": str(tmp_path / "spool.sqlite")},
            "collector": {"interval_s": 5, "jitter_s": 1, "profile_rows": 2},
            "meters": str(hil_env.meters_file),
        }
        for section, values in sections.items():
            doc.setdefault(section, {}).update(values)
        path = tmp_path / "gateway.yaml"
        path.write_text(yaml.safe_dump(doc, sort_keys=False))
        return path

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
